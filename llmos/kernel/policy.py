"""Queue policies: the order in which the scheduler serves processes, behind one interface.

A policy maps a process to a sort key; smaller keys run first and are preempted last. Stateful
policies also hear of arrivals and of the tokens each process is served (`on_add`, `charge`).
A policy may name the components of its key (`layers`), so the scheduler can say which layer
holds a waiting process back (`holding_layer`); a policy with a `shares` dict takes per-owner
weights from the system (`llmos users set-share`).

`fair` is per-owner fair share inside each priority class: a virtual token counter per owner
("Fairness in Serving Large Language Models", Sheng et al., OSDI 2024, VTC) charged
`input_weight` per prompt token and `output_weight` per output token, divided by the owner's
share; the backlogged owner with the smallest counter goes first. An owner that arrives after
being idle is lifted to the smallest counter of the owners already waiting (to the largest
counter when nobody is), so idle time cannot be banked and past service is not held against an
owner once the kernel has been idle. Invariant: a counter only grows; tokens recomputed after a preemption are not charged
again (the owner did not ask for them twice).

`llmos` (the default) is `fair` with the owner's processes ordered by predicted remaining work
(shortest first) with aging instead of by arrival: inside one class and owner a process's key is
`arrival_s + aging_window_s * r`, where `r` in [0, 1] grows with the log of its predicted
remaining tokens (`kernel.predict`). The bound (docs/design/scheduling.md): a process is never
ordered behind a process of its class and owner that arrived more than `aging_window_s` after
it, however long either is predicted to run, so mispredictions cost order, never a kill.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Protocol

from llmos.kernel.predict import remaining_tokens
from llmos.kernel.process import Process

Key = tuple[float, ...]


class SchedulingPolicy(Protocol):
    """Orders processes; the scheduler calls the hooks as work arrives and is served."""

    def key(self, proc: Process) -> Key: ...
    def on_add(self, proc: Process, active_owners: Iterable[str]) -> None: ...
    def charge(self, proc: Process, num_prompt_tokens: int, num_output_tokens: int) -> None: ...


class _Stateless:
    """A policy that is a pure function of the process."""

    def __init__(self, key: Callable[[Process], Key], layers: tuple[str, ...]) -> None:
        self.key = key
        self.layers = layers

    def on_add(self, proc: Process, active_owners: Iterable[str]) -> None:
        pass

    def charge(self, proc: Process, num_prompt_tokens: int, num_output_tokens: int) -> None:
        pass


def fcfs(proc: Process) -> Key:
    """First come, first served; priority classes ignored."""
    return (proc.seq_no,)


def priority(proc: Process) -> Key:
    """Priority classes (interactive > normal > batch), first come first served within one."""
    return (int(proc.priority), proc.seq_no)


class FairShare:
    """Priority classes, then the owner's virtual token counter (VTC), then arrival."""

    layers: tuple[str, ...] = ("priority", "fair-share", "queue")

    def __init__(
        self,
        *,
        input_weight: float = 1.0,
        output_weight: float = 2.0,
        shares: dict[str, float] | None = None,
    ) -> None:
        self.input_weight = input_weight
        self.output_weight = output_weight
        self.shares = dict(shares or {})
        self.counters: dict[str, float] = {}

    def key(self, proc: Process) -> Key:
        return (int(proc.priority), self.counters.get(proc.owner, 0.0), proc.seq_no)

    def on_add(self, proc: Process, active_owners: Iterable[str]) -> None:
        owners = set(active_owners)
        if proc.owner in owners:
            return  # already backlogged: its counter is live
        if owners:
            floor = min(self.counters.get(o, 0.0) for o in owners)
        else:
            # The kernel was idle: lift to the largest counter (VTC lifts to the counters of
            # the owners that just left), so past service is neither credit nor debt.
            floor = max(self.counters.values(), default=0.0)
        self.counters[proc.owner] = max(self.counters.get(proc.owner, 0.0), floor)

    def charge(self, proc: Process, num_prompt_tokens: int, num_output_tokens: int) -> None:
        cost = self.input_weight * num_prompt_tokens + self.output_weight * num_output_tokens
        share = self.shares.get(proc.owner, 1.0)
        self.counters[proc.owner] = self.counters.get(proc.owner, 0.0) + cost / share


# Remaining work is scaled by log1p(tokens) / log1p(LENGTH_SCALE_TOKENS), clamped to 1: short
# jobs (tens of tokens) and long ones (hundreds) sit far apart on that scale.
LENGTH_SCALE_TOKENS = 4096
DEFAULT_AGING_WINDOW_S = 60.0


class Llmos(FairShare):
    """Priority classes, then the owner's VTC counter, then shortest predicted remaining work
    with aging (`aging_window_s`), then arrival."""

    layers = ("priority", "fair-share", "shorter-job", "queue")

    def __init__(self, *, aging_window_s: float = DEFAULT_AGING_WINDOW_S, **fair: float) -> None:
        super().__init__(**fair)  # type: ignore[arg-type]
        self.aging_window_s = aging_window_s

    def key(self, proc: Process) -> Key:
        return (
            int(proc.priority),
            self.counters.get(proc.owner, 0.0),
            self.deadline(proc),
            proc.seq_no,
        )

    def deadline(self, proc: Process) -> float:
        """arrival + aging_window_s * (predicted remaining work on a 0..1 log scale)."""
        f = proc.features
        max_tokens = f.max_tokens if f is not None else proc.params.max_tokens
        max_tokens = max_tokens or LENGTH_SCALE_TOKENS
        left = remaining_tokens(proc.predicted_output_tokens, proc.num_output_tokens, max_tokens)
        r = min(math.log1p(left) / math.log1p(LENGTH_SCALE_TOKENS), 1.0)
        return proc.arrival_s + self.aging_window_s * r


def holding_layer(policy: SchedulingPolicy, ahead: Process, proc: Process) -> str:
    """The layer of `policy`'s order that puts `ahead` before `proc`: the name of the first key
    component where they differ ("queue" when unnamed or equal)."""
    names: tuple[str, ...] = getattr(policy, "layers", ())
    for i, (a, b) in enumerate(zip(policy.key(ahead), policy.key(proc), strict=False)):
        if a != b:
            return names[i] if i < len(names) else "queue"
    return "queue"


POLICIES: dict[str, Callable[..., SchedulingPolicy]] = {
    "fcfs": lambda **_: _Stateless(fcfs, ("queue",)),
    "priority": lambda **_: _Stateless(priority, ("priority", "queue")),
    "fair": lambda **_: FairShare(),
    "llmos": lambda aging_window_s=DEFAULT_AGING_WINDOW_S, **_: Llmos(
        aging_window_s=aging_window_s
    ),
}


def make_policy(name: str, **options: float) -> SchedulingPolicy:
    """The policy registered as `name`, given the options it takes (`aging_window_s`)."""
    if name not in POLICIES:
        raise ValueError(f"unknown scheduling policy {name!r}: one of {sorted(POLICIES)}")
    return POLICIES[name](**options)
