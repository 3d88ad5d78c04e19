"""Brute-force placement: every assignment of device subsets to models, scored by the same
objective as `llmos.kernel.placement` (served demand, then loads, unloads, bytes). The tests and
`benchmarks/bench_placement.py` check the MILP against it on small inventories."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

from llmos.kernel.placement import Device, ModelSpec


def brute_force(
    devices: Sequence[Device],
    models: Sequence[ModelSpec],
    demand: Mapping[str, float],
    current: Mapping[str, Sequence[str]],
    pinned: Mapping[str, Sequence[str]],
) -> tuple[float, int, int, int] | None:
    """The best (served, loads, unloads, bytes) over every feasible plan; None: none exists."""
    options = [_subsets(m, devices, pinned.get(m.model_id, ())) for m in models]
    best: tuple[float, int, int, int] | None = None
    for choice in itertools.product(*options):
        used = {d.name: 0 for d in devices}
        for m, on in zip(models, choice, strict=True):
            for name in on:
                used[name] += m.footprint_bytes
        if any(used[d.name] > d.capacity_bytes for d in devices):
            continue
        key = _key(devices, models, demand, current, choice)
        if best is None or (key[0], -key[1], -key[2], -key[3]) > (
            best[0],
            -best[1],
            -best[2],
            -best[3],
        ):
            best = key
    return best


def _subsets(m: ModelSpec, devices: Sequence[Device], pins: Sequence[str]) -> list[tuple[str, ...]]:
    names = [d.name for d in devices]
    limit = m.max_replicas if m.max_replicas is not None else len(names)
    return [
        on
        for k in range(min(limit, len(names)) + 1)
        for on in itertools.combinations(names, k)
        if set(pins) <= set(on)
    ]


def _key(
    devices: Sequence[Device],
    models: Sequence[ModelSpec],
    demand: Mapping[str, float],
    current: Mapping[str, Sequence[str]],
    choice: tuple[tuple[str, ...], ...],
) -> tuple[float, int, int, int]:
    by_name = {d.name: d for d in devices}
    served = 0.0
    loads = unloads = placed = 0
    for m, on in zip(models, choice, strict=True):
        want = demand.get(m.model_id, 0.0)
        rates = [m.throughput_on(by_name[n]) for n in on]
        if on:
            served += want if None in rates else min(want, sum(r or 0.0 for r in rates))
        now = set(current.get(m.model_id, ()))
        loads += len(set(on) - now)
        unloads += len(now - set(on))
        placed += m.footprint_bytes * len(on)
    return served, loads, unloads, placed
