"""Engine supervision: the health of each resident model's engine, and what to do when it fails.

A failed tick fails only the processes of its batch (the engine does that itself). The supervisor
counts those failures per model: `max_failures` within `failure_window_s` ask for a rebuild of the
engine (fresh KV pool, model reloaded), after an exponential backoff; `max_restarts` rebuilds
within the window mark a crash loop, and the model is refused (503 `engine_crashloop` with
Retry-After) until `crashloop_cooldown_s` has passed. The watchdog marks a tick that does not
return as stalled. Invariants: a model's state is one of `EngineState`; restarts only grow; the
supervisor decides, the residency manager acts (see docs/design/kernel.md, "Failures").
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from llmos.errors import ModelNotResident


class EngineState(StrEnum):
    """The health of one model's engine, as `/ready` and `llmos doctor` show it."""

    OK = "ok"
    RESTARTING = "restarting"  # a rebuild is pending or running
    CRASHLOOP = "crashloop"  # refused until the cool-down ends
    STALLED = "stalled"  # a tick has not returned within the watchdog timeout

    @property
    def is_serving(self) -> bool:
        return self in (EngineState.OK, EngineState.STALLED)


class Action(StrEnum):
    """What the supervisor asks for after a failure."""

    CONTINUE = "continue"  # keep ticking: the batch failed, the engine is fine
    RESTART = "restart"  # rebuild the engine after `ModelHealth.backoff_s`
    CRASHLOOP = "crashloop"  # unload it and refuse requests for a while


@dataclass(frozen=True, slots=True)
class SupervisorPolicy:
    max_failures: int = 3
    failure_window_s: float = 60.0
    max_restarts: int = 3
    restart_backoff_s: float = 1.0
    restart_backoff_max_s: float = 30.0
    crashloop_cooldown_s: float = 60.0


@dataclass(slots=True)
class ModelHealth:
    """One model's record (monotonic seconds; `last_error` is a one-line summary)."""

    state: EngineState = EngineState.OK
    restarts: int = 0
    num_failures: int = 0
    last_error: str | None = None
    backoff_s: float = 0.0
    crashloop_until_s: float = 0.0
    failures: collections.deque[float] = field(default_factory=collections.deque)
    restart_times: collections.deque[float] = field(default_factory=collections.deque)


@dataclass(frozen=True, slots=True)
class HealthView:
    """A copy of one model's health for readers on other threads."""

    model: str
    state: EngineState
    restarts: int
    num_failures: int
    last_error: str | None
    retry_after_s: float
    backoff_s: float


class Supervisor:
    """Thread-safe health records per model and the restart / crash-loop decisions."""

    def __init__(
        self, policy: SupervisorPolicy | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy or SupervisorPolicy()
        self._clock = clock
        self._lock = threading.Lock()
        self._models: dict[str, ModelHealth] = {}

    def record_failure(self, model: str, error: str, *, needs_rebuild: bool = False) -> Action:
        """A tick of `model` failed with `error`: continue, restart, or declare a crash loop.
        `needs_rebuild`: the engine's state is unknown, so it is rebuilt now (no more ticks)."""
        p = self.policy
        now = self._clock()
        with self._lock:
            h = self._models.setdefault(model, ModelHealth())
            h.num_failures += 1
            h.last_error = error
            if h.state is not EngineState.OK and h.state is not EngineState.STALLED:
                return Action.CONTINUE  # a rebuild or crash loop is already under way
            _trim(h.failures, now - p.failure_window_s)
            h.failures.append(now)
            if len(h.failures) < p.max_failures and not needs_rebuild:
                return Action.CONTINUE
            h.failures.clear()
            _trim(h.restart_times, now - p.failure_window_s)
            if len(h.restart_times) >= p.max_restarts:
                h.state = EngineState.CRASHLOOP
                h.crashloop_until_s = now + p.crashloop_cooldown_s
                h.restart_times.clear()
                return Action.CRASHLOOP
            h.state = EngineState.RESTARTING
            h.backoff_s = min(
                p.restart_backoff_max_s, p.restart_backoff_s * 2 ** len(h.restart_times)
            )
            h.restart_times.append(now)
            return Action.RESTART

    def restarted(self, model: str) -> None:
        """The rebuild of `model` finished: it serves again."""
        with self._lock:
            h = self._models.setdefault(model, ModelHealth())
            h.restarts += 1
            h.state = EngineState.OK

    def restart_failed(self, model: str, error: str) -> None:
        """The rebuild itself failed: the model is refused like a crash loop."""
        with self._lock:
            h = self._models.setdefault(model, ModelHealth())
            h.last_error = error
            h.state = EngineState.CRASHLOOP
            h.crashloop_until_s = self._clock() + self.policy.crashloop_cooldown_s

    def set_stalled(self, model: str, is_stalled: bool) -> None:
        with self._lock:
            h = self._models.setdefault(model, ModelHealth())
            if is_stalled and h.state is EngineState.OK:
                h.state = EngineState.STALLED
            elif not is_stalled and h.state is EngineState.STALLED:
                h.state = EngineState.OK

    def check_available(self, model: str) -> None:
        """Raise ModelNotResident (`engine_crashloop`, with Retry-After) while `model` is in a
        crash loop or being rebuilt; a finished cool-down lets the next request try again."""
        now = self._clock()
        with self._lock:
            h = self._models.get(model)
            if h is None or h.state.is_serving:
                return
            if h.state is EngineState.CRASHLOOP and now >= h.crashloop_until_s:
                h.state = EngineState.OK  # half open: the next load tries again
                return
            wait_s = (
                max(1.0, h.crashloop_until_s - now)
                if h.state is EngineState.CRASHLOOP
                else (max(1.0, h.backoff_s))
            )
            state, last_error = h.state, h.last_error
        raise EngineUnavailable(model, state, last_error, wait_s)

    def health(self, model: str) -> HealthView:
        now = self._clock()
        with self._lock:
            h = self._models.get(model) or ModelHealth()
            retry = max(0.0, h.crashloop_until_s - now) if h.state is EngineState.CRASHLOOP else 0.0
            return HealthView(
                model, h.state, h.restarts, h.num_failures, h.last_error, retry, h.backoff_s
            )

    def models(self) -> list[str]:
        with self._lock:
            return list(self._models)


class EngineUnavailable(ModelNotResident):
    """A model whose engine is crash-looping or being rebuilt; come back after Retry-After."""

    def __init__(self, model: str, state: EngineState, last_error: str | None, wait_s: float):
        what = "keeps failing" if state is EngineState.CRASHLOOP else "is being restarted"
        super().__init__(
            f"The model {model!r} {what} and is not serving now"
            + (f" (last error: {last_error})" if last_error else "")
            + ".",
            code="engine_crashloop" if state is EngineState.CRASHLOOP else "engine_restarting",
            param="model",
            hint=f"retry after {wait_s:.0f} s, or see `llmos doctor` and `llmos events`",
        )
        self.retry_after_s = wait_s
        self.headers = {"Retry-After": str(max(1, math.ceil(wait_s)))}


def _trim(times: collections.deque[float], oldest_s: float) -> None:
    while times and times[0] < oldest_s:
        times.popleft()
