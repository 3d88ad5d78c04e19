"""What happened to the system, as data every subsystem can report: the kinds of events, their
severity, why a model was evicted, the `EventSink` the kernel reports into, and the preemption
storm detector. Nothing here does I/O; `llmos.monitor.eventlog` persists events.
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


class Severity(enum.StrEnum):
    """How much an event matters: info (normal life), warning (degraded), error (failed)."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class EventKind(enum.StrEnum):
    """Every kind of event; its value is what the API and the CLI show and filter on."""

    MODEL_LOADED = "model_loaded"
    MODEL_EVICTED = "model_evicted"  # details.reason: an EvictReason
    MODEL_LOAD_FAILED = "model_load_failed"
    MODEL_PINNED = "model_pinned"  # details.pinned: true (pinned) or false (unpinned)
    ENGINE_FAILED = "engine_failed"  # a tick raised: the processes of its batch failed
    ENGINE_RESTARTED = "engine_restarted"
    ENGINE_STALLED = "engine_stalled"
    ENGINE_CRASHLOOP = "engine_crashloop"
    PREEMPTION_STORM = "preemption_storm"
    QUOTA_REFUSED = "quota_refused"
    RATE_LIMITED = "rate_limited"
    KEY_CREATED = "key_created"
    KEY_REVOKED = "key_revoked"
    SERVER_STARTED = "server_started"
    SERVER_STOPPING = "server_stopping"

    @property
    def default_severity(self) -> Severity:
        return _SEVERITIES.get(self, Severity.INFO)


_SEVERITIES = {
    EventKind.MODEL_LOAD_FAILED: Severity.ERROR,
    EventKind.ENGINE_FAILED: Severity.ERROR,
    EventKind.ENGINE_RESTARTED: Severity.WARNING,
    EventKind.ENGINE_STALLED: Severity.ERROR,
    EventKind.ENGINE_CRASHLOOP: Severity.ERROR,
    EventKind.PREEMPTION_STORM: Severity.WARNING,
    EventKind.QUOTA_REFUSED: Severity.WARNING,
    EventKind.RATE_LIMITED: Severity.WARNING,
}


class EvictReason(enum.StrEnum):
    """Why a resident model was unloaded (`details.reason` of a `model_evicted` event)."""

    LRU = "lru"  # least recently used, to make room for `details.for_model`
    IDLE = "idle"  # unused for longer than allowed
    MEMORY = "memory"  # to fit `details.for_model` into the memory budget
    UNLOAD = "unload"  # asked for (an admin removed or unloaded it)
    DEMAND = "demand"  # lowest predicted demand (not the least recent), for `details.for_model`
    PRELOAD = "preload"  # predicted to be needed less than `details.for_model`, being preloaded


def format_duration_s(seconds: float) -> str:
    """`42 s`, `20 min`, `3.5 h`: a duration as an operator reads it in a message."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True, slots=True)
class Event:
    """One event as stored: `seq` orders events (and is the `since` cursor of readers)."""

    seq: int
    ts: datetime
    kind: str  # an EventKind value (kept as text: a newer llmos may write kinds we lack)
    severity: str
    model: str | None
    message: str
    details: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts.isoformat(),
            "kind": self.kind,
            "severity": self.severity,
            "model": self.model,
            "message": self.message,
            "details": self.details,
        }


@dataclass(frozen=True, slots=True)
class EventPage:
    """Events oldest first, and the cursor to poll from next (`since_seq=last_seq`)."""

    events: list[Event]
    last_seq: int


class EventSink(Protocol):
    """Where subsystems report events (the kernel takes one in its constructor)."""

    def record(
        self,
        kind: EventKind,
        *,
        model: str | None = None,
        severity: Severity | None = None,
        message: str,
        throttle_key: str | None = None,
        **details: Any,
    ) -> None:
        """Report an event; never blocks, never raises. With `throttle_key`, repeats of the same
        (kind, key) within the log's repeat window are counted into the next one, not stored."""
        ...


class NoEvents:
    """An EventSink that drops everything (engines and tests built without an event log)."""

    def record(
        self,
        kind: EventKind,
        *,
        model: str | None = None,
        severity: Severity | None = None,
        message: str,
        throttle_key: str | None = None,
        **details: Any,
    ) -> None:
        return None


@dataclass(slots=True)
class PreemptionStorms:
    """One `preemption_storm` event per storm, from per-model preemption counters sampled now
    and then: a storm starts when `threshold` preemptions happen within `window_s`, and ends
    (re-arming the detector) once fewer than half as many happen in a window."""

    events: EventSink
    threshold: int
    window_s: float
    _samples: dict[str, collections.deque[tuple[float, int]]] = field(default_factory=dict)
    _storming: set[str] = field(default_factory=set)

    def observe(self, model: str, num_preemptions: int, now_s: float) -> bool:
        """Feed one sample of `model`'s preemption counter; True when a storm starts."""
        samples = self._samples.setdefault(model, collections.deque())
        if samples and num_preemptions < samples[-1][1]:
            samples.clear()  # a new engine for this model: its counter restarted
        samples.append((now_s, num_preemptions))
        # Keep one sample at or before the window's start: the count since then covers it.
        while len(samples) > 1 and samples[1][0] <= now_s - self.window_s:
            samples.popleft()
        num_recent = num_preemptions - samples[0][1]
        if model in self._storming:
            if num_recent < self.threshold / 2:
                self._storming.discard(model)
            return False
        if num_recent < self.threshold:
            return False
        self._storming.add(model)
        self.events.record(
            EventKind.PREEMPTION_STORM,
            model=model,
            message=f"{num_recent} preemptions of {model} processes in {self.window_s:.0f} s: "
            "the KV pool is too small for the load (raise memory.kv_cache_bytes or lower "
            "kernel.max_num_seqs)",
            num_preemptions=num_recent,
            window_s=self.window_s,
            threshold=self.threshold,
        )
        return True
