"""Liveness and readiness of a kernel, as plain data for `/health`, `/ready` and `llmos doctor`.

Liveness: the engine loop thread is running and its kernel is not dead. Readiness adds: not
draining, and not stalled (work pending but no tick for `stall_after_s`). A machine-readable reason
accompanies every "not ok", and nothing about the configuration leaks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

STALL_AFTER_S = 60.0


class LoopLike(Protocol):
    is_draining: bool
    dead_reason: str | None
    last_tick_s: float

    @property
    def is_alive(self) -> bool: ...

    @property
    def num_live(self) -> int: ...


@dataclass(slots=True)
class HealthReport:
    status: str  # "ok" | "not_ready" | "dead"
    reasons: list[str] = field(default_factory=list)

    @property
    def is_ok(self) -> bool:
        return self.status == "ok"


def liveness(loop: LoopLike) -> HealthReport:
    if loop.dead_reason is not None:
        return HealthReport("dead", ["kernel_dead"])
    if not loop.is_alive:
        return HealthReport("dead", ["engine_loop_stopped"])
    return HealthReport("ok")


def readiness(loop: LoopLike, *, stall_after_s: float = STALL_AFTER_S) -> HealthReport:
    reasons = list(liveness(loop).reasons)
    if loop.is_draining:
        reasons.append("draining")
    if loop.num_live and time.monotonic() - loop.last_tick_s > stall_after_s:
        reasons.append("stalled")
    return HealthReport("not_ready" if reasons else "ok", reasons)
