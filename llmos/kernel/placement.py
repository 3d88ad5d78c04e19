"""Placement by mixed-integer linear programming: which models go on which device, and why.

A pure function of (inventory, footprints, demand[, current, pinned]): no I/O, no globals, so
one machine's resident set and a cluster's placement are the same solve. The objective, in
order (each a tie-break of the ones before it):

1. maximise served demand. A model with no throughput given is served in full by one replica;
   with a throughput per replica, it serves min(demand, the sum of its replicas' throughputs);
2. fewest loads (replicas placed where the model is not already resident), then fewest
   unloads (current replicas dropped);
3. fewest bytes placed (a smaller model is preferred to a larger one of equal demand).

Solved with SciPy's `milp` (HiGHS) in two stages: (1), then (2)+(3) with (1) held at its
optimum; (1) and (2) are proven exactly, (3) to within a fraction of a byte share. A stage
that reaches its time limit keeps its best plan and says so. Invariants: no device holds more than its capacity (checked in exact integers after
the solve); a device holds at most one replica of a model; pinned replicas are always placed;
a request that cannot be honoured (pinned models over a capacity) is refused in words before
any solve, and every model left out says why. See docs/placement.md.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from llmos.errors import InvalidRequest
from llmos.kernel.placement_solver import PackingProblem, Solution, solve

DeviceKind = Literal["host", "gpu"]
DEVICE_KINDS: tuple[DeviceKind, ...] = ("host", "gpu")
HOST = "host"  # the one device of `choose_resident_set`
# Per solver stage. Proving a large plan optimal is NP-hard (bin packing hides inside); past
# this the best plan found is returned with its proven bound (`Plan.is_optimal` says which).
DEFAULT_TIME_LIMIT_S = 1.0


@dataclass(frozen=True, slots=True)
class Device:
    """One place a model can be resident: host RAM under the memory budget, or a GPU."""

    name: str
    capacity_bytes: int
    kind: DeviceKind = "host"
    node: str = "local"  # the machine it is on (one node until the cluster issue)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model to place: its measured footprint (weights + the KV pool and working memory one
    replica needs), how many replicas it may have (None: one per device at most), and
    optionally what one replica serves, in the demand's unit: a number for every device, or a
    mapping from device name or kind to a number (a device it does not name serves 0)."""

    model_id: str
    footprint_bytes: int
    max_replicas: int | None = None
    throughput: float | Mapping[str, float] | None = field(default=None, hash=False)

    def throughput_on(self, device: Device) -> float | None:
        """What one replica on `device` serves; None: its whole demand (no throughput given)."""
        if self.throughput is None:
            return None
        if isinstance(self.throughput, int | float):
            return float(self.throughput)
        for key in (device.name, device.kind):
            if key in self.throughput:
                return float(self.throughput[key])
        return 0.0


@dataclass(frozen=True, slots=True)
class ModelPlacement:
    """Where one model goes (devices in inventory order; empty: not placed) and why."""

    model_id: str
    devices: tuple[str, ...]
    footprint_bytes: int
    demand: float
    served: float
    reason: str

    @property
    def is_placed(self) -> bool:
        return bool(self.devices)


@dataclass(frozen=True, slots=True)
class DeviceUse:
    """A device in the plan: what it holds and how full it is."""

    name: str
    kind: DeviceKind
    node: str
    capacity_bytes: int
    used_bytes: int
    models: tuple[str, ...]

    @property
    def free_bytes(self) -> int:
        return self.capacity_bytes - self.used_bytes


@dataclass(frozen=True, slots=True)
class Plan:
    """The solver's answer: one `ModelPlacement` per model (input order), one `DeviceUse` per
    device (inventory order), the objective and the moves from the current placement."""

    models: tuple[ModelPlacement, ...]
    devices: tuple[DeviceUse, ...]
    served_demand: float
    total_demand: float
    loads: tuple[tuple[str, str], ...]  # (model id, device) replicas to load
    unloads: tuple[tuple[str, str], ...]  # (model id, device) current replicas to drop
    served_bound: float  # no plan serves more (equal to served_demand when proven optimal)
    is_optimal: bool  # served demand, loads and unloads proven optimal; False: a stage timed out

    @property
    def placed_bytes(self) -> int:
        return sum(d.used_bytes for d in self.devices)

    @property
    def objective(self) -> tuple[float, int, int, int]:
        """(served demand, loads, unloads, bytes placed): the first is maximised, the rest
        minimised in that order."""
        return (self.served_demand, len(self.loads), len(self.unloads), self.placed_bytes)

    @property
    def unplaced(self) -> tuple[ModelPlacement, ...]:
        return tuple(m for m in self.models if not m.is_placed)

    @property
    def resident_set(self) -> frozenset[str]:
        """The ids of the models placed anywhere (on one device: what should be resident)."""
        return frozenset(m.model_id for m in self.models if m.is_placed)

    def placement(self, model_id: str) -> ModelPlacement:
        return next(m for m in self.models if m.model_id == model_id)

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain JSON-ready data."""
        return {
            "served_demand": self.served_demand,
            "total_demand": self.total_demand,
            "served_bound": self.served_bound,
            "is_optimal": self.is_optimal,
            "placed_bytes": self.placed_bytes,
            "loads": [list(p) for p in self.loads],
            "unloads": [list(p) for p in self.unloads],
            "models": [
                {
                    "model": m.model_id,
                    "devices": list(m.devices),
                    "footprint_bytes": m.footprint_bytes,
                    "demand": m.demand,
                    "served": m.served,
                    "reason": m.reason,
                }
                for m in self.models
            ],
            "devices": [
                {
                    "name": d.name,
                    "kind": d.kind,
                    "node": d.node,
                    "capacity_bytes": d.capacity_bytes,
                    "used_bytes": d.used_bytes,
                    "free_bytes": d.free_bytes,
                    "models": list(d.models),
                }
                for d in self.devices
            ],
        }


def plan_placement(
    devices: Sequence[Device],
    models: Sequence[ModelSpec],
    demand: Mapping[str, float],
    *,
    current: Mapping[str, Collection[str]] | None = None,
    pinned: Mapping[str, Collection[str]] | None = None,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
) -> Plan:
    """Place `models` on `devices` to maximise served `demand` (model id -> forecast requests
    or tokens per window; a model it omits has none), then keep `current` replicas (model id
    -> devices it is resident on now), then use the fewest bytes. `pinned` (model id ->
    devices) replicas are always placed; raises InvalidRequest, in words, for bad input or
    pins that cannot all fit."""
    current = current or {}
    pinned = pinned or {}
    _check(devices, models, demand, current, pinned)
    problem = _Problem.build(devices, models, demand, current, pinned)
    return _explain(problem, solve(problem.packing, time_limit_s))


def choose_resident_set(
    budget_bytes: int,
    footprints: Mapping[str, int],
    demand: Mapping[str, float] | None = None,
    *,
    pinned: Collection[str] = (),
    current: Collection[str] = (),
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
) -> Plan:
    """The models one machine should keep resident under `budget_bytes`: the same solve on one
    device named "host". `demand` defaults to equal demand for every model; `pinned` models
    are always included (InvalidRequest, with the numbers, when they alone exceed the budget);
    `current` ones are preferred on ties. `plan.resident_set` is the answer."""
    device = Device(HOST, budget_bytes, "host")
    specs = [ModelSpec(model_id, size, max_replicas=1) for model_id, size in footprints.items()]
    if demand is None:
        demand = dict.fromkeys(footprints, 1.0)
    return plan_placement(
        [device],
        specs,
        demand,
        current={m: [HOST] for m in current if m in footprints},
        pinned={m: [HOST] for m in pinned},
        time_limit_s=time_limit_s,
    )


def format_bytes(n: float) -> str:
    """1288490188 -> '1.2 GiB' (binary units, as the memory budget errors print them)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# --- input checks: every refusal is a sentence with the numbers -------------------------------


def _check(
    devices: Sequence[Device],
    models: Sequence[ModelSpec],
    demand: Mapping[str, float],
    current: Mapping[str, Collection[str]],
    pinned: Mapping[str, Collection[str]],
) -> None:
    _check_unique("device", [d.name for d in devices])
    _check_unique("model", [m.model_id for m in models])
    for d in devices:
        if d.capacity_bytes < 0:
            raise InvalidRequest(f"device {d.name} has a negative capacity ({d.capacity_bytes})")
        if d.kind not in DEVICE_KINDS:
            raise InvalidRequest(f"device {d.name} has kind {d.kind!r}; allowed: host, gpu")
    for m in models:
        _check_model(m, devices)
    known = {m.model_id for m in models}
    for model_id, value in demand.items():
        if model_id not in known:
            raise InvalidRequest(f"demand names unknown model {model_id!r}{_known(known)}")
        if not (math.isfinite(value) and value >= 0):
            raise InvalidRequest(f"demand of {model_id} is {value}; it must be a number >= 0")
    names = {d.name for d in devices}
    for what, table in (("current", current), ("pinned", pinned)):
        for model_id, on in table.items():
            if model_id not in known:
                raise InvalidRequest(f"{what} names unknown model {model_id!r}{_known(known)}")
            for name in on:
                if name not in names:
                    raise InvalidRequest(
                        f"{what} puts {model_id} on unknown device {name!r}{_known(names)}"
                    )
    _check_pins(devices, models, pinned)


def _check_unique(what: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InvalidRequest(f"{what} {name!r} is listed twice")
        seen.add(name)


def _check_model(m: ModelSpec, devices: Sequence[Device]) -> None:
    if m.footprint_bytes < 0:
        raise InvalidRequest(f"model {m.model_id} has a negative footprint ({m.footprint_bytes})")
    if m.max_replicas is not None and m.max_replicas < 1:
        raise InvalidRequest(f"model {m.model_id} has max_replicas {m.max_replicas}; must be >= 1")
    values = list(m.throughput.values()) if isinstance(m.throughput, Mapping) else [m.throughput]
    for value in values:
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise InvalidRequest(f"model {m.model_id} has throughput {value}; must be >= 0")
    if isinstance(m.throughput, Mapping):
        keys = {d.name for d in devices} | set(DEVICE_KINDS)
        for key in m.throughput:
            if key not in keys:
                raise InvalidRequest(
                    f"model {m.model_id} has a throughput for {key!r}, which is neither a "
                    f"device nor a kind{_known(keys)}"
                )


def _check_pins(
    devices: Sequence[Device], models: Sequence[ModelSpec], pinned: Mapping[str, Collection[str]]
) -> None:
    by_id = {m.model_id: m for m in models}
    for model_id, on in pinned.items():
        limit = by_id[model_id].max_replicas
        if limit is not None and len(set(on)) > limit:
            raise InvalidRequest(
                f"model {model_id} is pinned on {len(set(on))} devices but may have at most "
                f"{limit} replica(s)"
            )
    for d in devices:
        held = [by_id[m] for m, on in pinned.items() if d.name in on]
        need = sum(m.footprint_bytes for m in held)
        if need <= d.capacity_bytes:
            continue
        if len(held) == 1:
            raise InvalidRequest(
                f"pinned model {held[0].model_id} needs {format_bytes(need)}; device {d.name} "
                f"has {format_bytes(d.capacity_bytes)}",
                hint="unpin it or give the device more memory",
            )
        names = ", ".join(m.model_id for m in held)
        raise InvalidRequest(
            f"pinned models {names} need {format_bytes(need)} together; device {d.name} has "
            f"{format_bytes(d.capacity_bytes)}",
            hint="unpin some of them or give the device more memory",
        )


def _known(names: Collection[str]) -> str:
    return f" (known: {', '.join(sorted(names))})" if names else " (there are none)"


# --- the problem as arrays ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Problem:
    """The inputs, the MILP built from them, and what the explanations need."""

    devices: Sequence[Device]
    models: Sequence[ModelSpec]
    demand: np.ndarray  # (M,) raw forecast demand
    scale: float  # the largest demand: the MILP sees demand / scale
    packing: PackingProblem
    stranded: list[tuple[int, int]]  # current (model, device) pairs where it no longer fits

    @property
    def pairs(self) -> list[tuple[int, int]]:
        p = self.packing
        return list(zip(p.pair_model.tolist(), p.pair_device.tolist(), strict=True))

    @classmethod
    def build(
        cls,
        devices: Sequence[Device],
        models: Sequence[ModelSpec],
        demand: Mapping[str, float],
        current: Mapping[str, Collection[str]],
        pinned: Mapping[str, Collection[str]],
    ) -> _Problem:
        raw = np.array([float(demand.get(m.model_id, 0.0)) for m in models])
        scale = float(raw.max()) if raw.size and raw.max() > 0 else 1.0
        pairs, value, is_current, is_pinned, stranded = [], [], [], [], []
        for i, m in enumerate(models):
            for j, d in enumerate(devices):
                now = d.name in current.get(m.model_id, ())
                if m.footprint_bytes > d.capacity_bytes:
                    if now:
                        stranded.append((i, j))
                    continue
                per_replica = m.throughput_on(d)
                serves = raw[i] if per_replica is None else min(per_replica, raw[i])
                is_pin = d.name in pinned.get(m.model_id, ())
                if serves <= 0 and not (now or is_pin):
                    continue  # a replica that serves nothing is only ever a cost
                pairs.append((i, j))
                value.append(serves / scale)
                is_current.append(now)
                is_pinned.append(is_pin)
        limits = [_replica_limit(m, raw[i], devices, current, pinned) for i, m in enumerate(models)]
        packing = PackingProblem(
            capacity_bytes=np.array([d.capacity_bytes for d in devices], dtype=np.int64),
            footprint_bytes=np.array([m.footprint_bytes for m in models], dtype=np.int64),
            max_replicas=np.array(limits, dtype=np.int64),
            demand=raw / scale,
            pair_model=np.array([i for i, _ in pairs], dtype=np.int64),
            pair_device=np.array([j for _, j in pairs], dtype=np.int64),
            pair_value=np.array(value, dtype=float),
            is_current=np.array(is_current, dtype=bool),
            is_pinned=np.array(is_pinned, dtype=bool),
        )
        return cls(devices, models, raw, scale, packing, stranded)


def _replica_limit(
    m: ModelSpec,
    demand: float,
    devices: Sequence[Device],
    current: Mapping[str, Collection[str]],
    pinned: Mapping[str, Collection[str]],
) -> int:
    """The most replicas an optimal plan can give `m`, which spares the MILP useless choices:
    beyond the replicas its demand can use (one without a throughput; enough of the slowest
    serving device's to cover its demand with one), every replica that is neither resident nor
    pinned only costs a load."""
    limit = m.max_replicas if m.max_replicas is not None else len(devices)
    kept = len(set(current.get(m.model_id, ())) | set(pinned.get(m.model_id, ())))
    rates = [t for t in (m.throughput_on(d) for d in devices) if t is None or t > 0]
    if demand <= 0 or not rates:
        useful = 0
    elif None in rates:
        return min(limit, max(1, kept))
    else:
        useful = math.ceil(demand / min(t for t in rates if t is not None))
    return min(limit, useful + kept)


# --- the plan and its reasons -------------------------------------------------------------------


def _explain(problem: _Problem, solution: Solution) -> Plan:
    devices, models, chosen = problem.devices, problem.models, solution.chosen
    on: list[list[int]] = [[] for _ in models]  # device indices per model
    for (i, j), is_on in zip(problem.pairs, chosen, strict=True):
        if is_on:
            on[i].append(j)
    uses = _device_uses(devices, models, on)
    loads, unloads = _moves(problem, chosen)
    placements = []
    for i, m in enumerate(models):
        served = _served(m, devices, on[i], float(problem.demand[i]))
        reason = _reason(problem, i, on[i], served, uses, solution.is_optimal)
        names = tuple(devices[j].name for j in sorted(on[i]))
        placements.append(
            ModelPlacement(
                m.model_id, names, m.footprint_bytes, float(problem.demand[i]), served, reason
            )
        )
    served_demand = sum(p.served for p in placements)
    return Plan(
        tuple(placements),
        tuple(uses),
        served_demand=served_demand,
        total_demand=float(problem.demand.sum()),
        loads=tuple(loads),
        unloads=tuple(unloads),
        served_bound=max(solution.served_bound * problem.scale, served_demand),
        is_optimal=solution.is_optimal,
    )


def _device_uses(
    devices: Sequence[Device], models: Sequence[ModelSpec], on: list[list[int]]
) -> list[DeviceUse]:
    held: list[list[ModelSpec]] = [[] for _ in devices]
    for i, js in enumerate(on):
        for j in js:
            held[j].append(models[i])
    return [
        DeviceUse(
            d.name,
            d.kind,
            d.node,
            d.capacity_bytes,
            sum(m.footprint_bytes for m in held[j]),
            tuple(m.model_id for m in held[j]),
        )
        for j, d in enumerate(devices)
    ]


def _moves(
    problem: _Problem, chosen: np.ndarray
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    loads, unloads = [], []
    is_current = problem.packing.is_current
    for (i, j), is_on, now in zip(problem.pairs, chosen, is_current, strict=True):
        pair = (problem.models[i].model_id, problem.devices[j].name)
        if is_on and not now:
            loads.append(pair)
        elif now and not is_on:
            unloads.append(pair)
    # A current replica on a device now too small for it is always dropped.
    stranded = [(problem.models[i].model_id, problem.devices[j].name) for i, j in problem.stranded]
    return loads, unloads + stranded


def _served(m: ModelSpec, devices: Sequence[Device], on: list[int], demand: float) -> float:
    """What the replicas on `on` serve, recomputed exactly (not read back from the solver)."""
    if not on:
        return 0.0
    per_replica = [m.throughput_on(devices[j]) for j in on]
    if any(t is None for t in per_replica):
        return demand
    return min(demand, sum(t for t in per_replica if t is not None))


def _reason(
    problem: _Problem,
    i: int,
    on: list[int],
    served: float,
    uses: list[DeviceUse],
    is_optimal: bool,
) -> str:
    """One sentence: where the model goes and what that serves, or why it goes nowhere."""
    m, demand = problem.models[i], float(problem.demand[i])
    if on:
        return _placed_reason(problem, i, on, served, uses)
    fits = [j for j, d in enumerate(problem.devices) if m.footprint_bytes <= d.capacity_bytes]
    if not problem.devices:
        return "there are no devices"
    if not fits:
        largest = max(problem.devices, key=lambda d: d.capacity_bytes)
        return (
            f"needs {format_bytes(m.footprint_bytes)}; the largest device, {largest.name}, has "
            f"{format_bytes(largest.capacity_bytes)}"
        )
    if demand == 0:
        return "no forecast demand"
    if all(m.throughput_on(problem.devices[j]) == 0 for j in fits):
        names = ", ".join(problem.devices[j].name for j in fits)
        return f"serves nothing on the devices it fits on ({names}): its throughput there is 0"
    full = "; ".join(_room(uses[j]) for j in fits)
    why = (
        f"making room would lose at least as much demand as it adds ({_num(demand)})"
        if is_optimal
        else "the rest went to other models (the best plan found in the time limit)"
    )
    return (
        f"needs {format_bytes(m.footprint_bytes)}; every device it fits on is taken ({full}): {why}"
    )


def _placed_reason(
    problem: _Problem, i: int, on: list[int], served: float, uses: list[DeviceUse]
) -> str:
    m, demand = problem.models[i], float(problem.demand[i])
    where = ", ".join(f"{problem.devices[j].name} ({_how(problem, i, j)})" for j in sorted(on))
    if demand == 0:
        return f"on {where}: no forecast demand, but pinned or resident and fits"
    if served >= demand:
        return f"on {where}: serves all its demand ({_num(demand)})"
    what = f"on {where}: serves {_num(served)} of {_num(demand)}"
    if m.max_replicas is not None and len(on) >= m.max_replicas:
        return f"{what}; it may have at most {m.max_replicas} replica(s)"
    others = [
        j
        for j, d in enumerate(problem.devices)
        if j not in on and m.footprint_bytes <= d.capacity_bytes and m.throughput_on(d) != 0
    ]
    if not others:
        return f"{what}; no other device can hold and serve it"
    full = "; ".join(_room(uses[j]) for j in others)
    return f"{what}; the other devices it could serve from are taken ({full})"


def _how(problem: _Problem, i: int, j: int) -> str:
    """'kept' or 'load', with 'pinned, ' before when the replica is pinned."""
    p = problem.packing
    k = int(np.flatnonzero((p.pair_model == i) & (p.pair_device == j))[0])
    how = "kept" if p.is_current[k] else "load"
    return f"pinned, {how}" if p.is_pinned[k] else how


def _room(use: DeviceUse) -> str:
    holds = f", holds {', '.join(use.models)}" if use.models else ""
    return f"{use.name} has {format_bytes(use.free_bytes)} free{holds}"


def _num(value: float) -> str:
    return f"{value:g}"
