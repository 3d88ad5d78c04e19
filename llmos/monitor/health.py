"""Liveness and readiness of a kernel, as plain data for `/health`, `/ready` and `llmos doctor`.

Liveness: the engine loop thread is running and its kernel is not dead. Readiness adds: not
draining, and not stalled (the watchdog saw a tick that does not return, or work is pending but no
tick came for `stall_after_s`). A model whose engine is crash-looping or being rebuilt makes the
server "degraded" (still 200: its other models serve) and is listed under `models`; so does a
data dir whose disk is below `storage.min_free_bytes` (`disk_low`: writes may fail with 507, but
reads and inference go on). A machine-readable reason accompanies every "not ok", and nothing
about the configuration leaks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from llmos.kernel.supervisor import EngineState, HealthView

STALL_AFTER_S = 60.0


class LoopLike(Protocol):
    is_draining: bool
    dead_reason: str | None
    last_tick_s: float
    stalled: str | None

    @property
    def is_alive(self) -> bool: ...

    @property
    def num_live(self) -> int: ...


@dataclass(slots=True)
class HealthReport:
    status: str  # "ok" | "degraded" (200) | "not_ready" | "dead" (503)
    reasons: list[str] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_ok(self) -> bool:
        """Whether the probe answers 200 (a degraded server still serves its other models)."""
        return self.status in ("ok", "degraded")


def liveness(loop: LoopLike) -> HealthReport:
    if loop.dead_reason is not None:
        return HealthReport("dead", ["kernel_dead"])
    if not loop.is_alive:
        return HealthReport("dead", ["engine_loop_stopped"])
    return HealthReport("ok")


_MODEL_REASONS = {
    EngineState.CRASHLOOP: "engine_crashloop",
    EngineState.RESTARTING: "engine_restarting",
}


def readiness(
    loop: LoopLike,
    *,
    models: Sequence[HealthView] = (),
    stall_after_s: float = STALL_AFTER_S,
    is_disk_low: bool = False,
) -> HealthReport:
    """Readiness of the server; `models` are the supervisor's records of each model;
    `is_disk_low` says the data dir's disk is below `storage.min_free_bytes`."""
    reasons = list(liveness(loop).reasons)
    if loop.is_draining:
        reasons.append("draining")
    if loop.stalled is not None:
        reasons.append("engine_stalled")
    elif loop.num_live and time.monotonic() - loop.last_tick_s > stall_after_s:
        reasons.append("stalled")
    degraded = sorted({_MODEL_REASONS[m.state] for m in models if m.state in _MODEL_REASONS})
    if is_disk_low:
        degraded.append("disk_low")
    status = "not_ready" if reasons else ("degraded" if degraded else "ok")
    listed = [
        {
            "model": m.model,
            "state": m.state.value,
            "restarts": m.restarts,
            "failures": m.num_failures,
            "last_error": m.last_error,
        }
        for m in models
    ]
    return HealthReport(status, reasons + degraded, listed)
