"""The engine driver: ONE background thread ticks every resident engine, round-robin, and fans
their outputs out to subscribers.

One compute thread, not one per engine: on a small CPU two threads running torch at once slow
each other far more than they gain. Each round gives every engine that has work one tick.
Engines join (`add_engine`) and leave (`remove_engine`, refused while they have live processes)
from any thread. Submissions land in an engine's inbox and wake the driver; each ProcessOutput is
handed to the subscriber registered for its pid (for asyncio callers, onto an `asyncio.Queue`
through `call_soon_threadsafe`). Invariants: a pid has a subscriber from the moment `submit`
returns until its finished output is dispatched; pids are unique across engines (they share the
loop's `pids` counter); the number of live processes over all engines never exceeds
`max_running + max_waiting`; once the kernel is dead every live subscriber has received a
finished output with `FinishReason.ERROR` and every later submission raises `KernelDead`.

Failures stay where they happen: a tick that raises fails the processes of its batch (the engine
reports them in `TickFailed`) or, if the engine cannot say, every process of that engine; the
other engines keep ticking and `on_engine_failure` (the residency manager) decides whether to
rebuild the engine. A watchdog thread marks a tick that does not return within
`watchdog_timeout_s` as stalled: it logs every thread's stack, ends every live stream with an
error, and past `watchdog_exit_s` exits the process with `EXIT_STALLED` so a supervisor
(systemd, Kubernetes) restarts it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast

from llmos.errors import KernelDead, ModelNotResident, Overloaded
from llmos.kernel.outputs import (
    EngineStats,
    FinishReason,
    ProcessOutput,
    RequestTiming,
    TickFailed,
)
from llmos.kernel.params import SamplingParams
from llmos.kernel.process import Priority, ProcessInfo
from llmos.kernel.reservation import Allotments

if TYPE_CHECKING:
    from llmos.kernel.predict import Predictor
    from llmos.monitor.events import PreemptionStorms
    from llmos.monitor.metrics import Metrics, ModelMetrics

logger = logging.getLogger(__name__)

Sink = Callable[[ProcessOutput], None]
# (engine, one-line error, whether the engine's state is unknown and it must be rebuilt)
FailureHandler = Callable[["EngineLike", str, bool], None]
THROUGHPUT_WINDOW_S = 5.0
IDLE_WAIT_S = 0.5
STORM_CHECK_S = 1.0  # how often the driver samples preemption counters for storms
EXIT_STALLED = 70  # EX_SOFTWARE: the watchdog gave up on a hung tick


class Tickable(Protocol):
    """Anything the driver ticks on its one compute thread (a model's engine; later a job)."""

    @property
    def name(self) -> str: ...
    def has_work(self) -> bool: ...
    def step(self) -> Sequence[ProcessOutput]: ...


class EngineLike(Protocol):
    """The part of `llmos.kernel.engine.Engine` the driver uses."""

    model_name: str

    @property
    def name(self) -> str: ...

    def submit(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        *,
        owner: str = ...,
        priority: Priority = ...,
    ) -> int: ...
    def step(self) -> list[ProcessOutput]: ...
    def has_work(self) -> bool: ...
    def kill(self, pid: int) -> bool: ...
    def renice(self, pid: int, priority: Priority) -> bool: ...
    def processes(self) -> list[ProcessInfo]: ...
    def stats(self) -> EngineStats: ...


@dataclass(slots=True)
class _Live:
    """Driver-side bookkeeping for one live process (monotonic seconds)."""

    sink: Sink
    engine: EngineLike
    arrival_s: float
    first_token_s: float | None = None
    last_token_s: float | None = None


@dataclass(slots=True)
class _Throughput:
    """Generated tokens over a sliding window, for `tokens_per_s` in `/os/stats` and `top`."""

    samples: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)
    started_s: float = field(default_factory=time.monotonic)

    def add(self, now_s: float, num_tokens: int) -> None:
        self.samples.append((now_s, num_tokens))
        while self.samples and self.samples[0][0] < now_s - THROUGHPUT_WINDOW_S:
            self.samples.popleft()

    def rate(self, now_s: float) -> float:
        window_s = min(THROUGHPUT_WINDOW_S, max(now_s - self.started_s, 1e-3))
        return sum(n for t, n in list(self.samples) if t >= now_s - window_s) / window_s


class EngineLoop:
    """Drives every resident engine from one background thread and fans their outputs out."""

    def __init__(
        self,
        engine: EngineLike | None = None,
        *,
        max_running: int,
        max_waiting: int,
        metrics: Metrics | None = None,
        pids: Iterator[int] | None = None,
        watchdog_timeout_s: float = 0.0,
        watchdog_exit_s: float = 0.0,
    ) -> None:
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.metrics = metrics
        self.watchdog_timeout_s = watchdog_timeout_s
        self.watchdog_exit_s = watchdog_exit_s
        self.on_engine_failure: FailureHandler | None = None
        self.on_stall: Callable[[str, bool], None] | None = None  # (model, is_stalled)
        # (model, output) for each process that finished, from the driver thread: must be quick
        self.on_process_finished: Callable[[str, ProcessOutput], None] | None = None
        self.exit_process: Callable[[int], None] = os._exit  # tests may replace it
        # Engines added later must be built with `pids=loop.pids` (kill PID finds one engine).
        self.pids: Iterator[int] = pids if pids is not None else itertools.count(1)
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._engines: dict[str, EngineLike] = {}
        self._live: dict[int, _Live] = {}
        self._throughput = _Throughput()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.is_draining = False
        self.dead_reason: str | None = None
        self.last_tick_s = time.monotonic()
        self.last_progress_s = time.monotonic()
        self.preemption_storms: PreemptionStorms | None = None  # set by llmos.system
        self.predictor: Predictor | None = None  # the engines' shared one (llmos.system)
        self.storm_check_s = STORM_CHECK_S
        self._storms_due_s = 0.0
        self._tasks: dict[str, Tickable] = {}
        self.allotments = Allotments()  # shares and reservations, set by llmos.system
        self._faults: dict[str, collections.deque[tuple[str, float]]] = {}
        self._tick_started_s: float | None = None
        self._ticking: str | None = None  # the name of the engine or task in a tick
        self.stalled: str | None = None  # the model whose tick the watchdog gave up on
        if engine is not None:
            self.add_engine(engine)
        if metrics is not None:
            metrics.add_snapshot_source(self.snapshot)

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="llmos-engine", daemon=True)
        self._thread.start()
        if self.watchdog_timeout_s > 0:
            threading.Thread(target=self._watch, name="llmos-watchdog", daemon=True).start()
        logger.info("engine loop started (models: %s)", ", ".join(self.model_names) or "none")

    def stop(self, timeout_s: float = 5.0) -> None:
        """Kill what is still live, then stop the driver thread."""
        self.kill_all()
        deadline = time.monotonic() + timeout_s
        while self.num_live and time.monotonic() < deadline and self.is_alive:
            time.sleep(0.01)
        self._stopping = True
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout=max(deadline - time.monotonic(), 0.1))
        if self.predictor is not None:
            self.predictor.close()
        logger.info("engine loop stopped")

    def begin_drain(self) -> None:
        """Stop admitting; live processes keep running."""
        self.is_draining = True
        logger.info("draining: %d live processes", self.num_live)

    @property
    def is_alive(self) -> bool:
        return self.dead_reason is None and self._thread is not None and self._thread.is_alive()

    @property
    def num_live(self) -> int:
        return len(self._live)

    # ---- engines (any thread) --------------------------------------------------------------

    def add_engine(self, engine: EngineLike) -> None:
        """Start ticking `engine` (a model just made resident)."""
        with self._lock:
            if engine.model_name in self._engines:
                raise ValueError(f"model {engine.model_name} is already in the engine loop")
            self._engines[engine.model_name] = engine
            armed = self._faults.get(engine.model_name)
            if armed is not None and hasattr(engine, "faults"):
                engine.faults = armed  # a rebuilt engine meets the same test faults
            self._allot(engine)
        logger.info("model %s joins the engine loop", engine.model_name)

    def set_allotments(self, allotments: Allotments) -> None:
        """Hand every engine, now and later, new fair-share weights and its model's
        reservations (applied at each engine's next tick)."""
        with self._lock:
            self.allotments = allotments
            for engine in self._engines.values():
                self._allot(engine)
        self._wakeup.set()

    def _allot(self, engine: EngineLike) -> None:
        if hasattr(engine, "set_allotments"):  # test engines may have no scheduler
            a = self.allotments
            engine.set_allotments(a.shares, a.reservations.get(engine.model_name, {}))

    def remove_engine(self, model_name: str) -> EngineLike | None:
        """Stop ticking a model's engine and return it; None if it is not here or still has
        live processes (checked under the admission lock, so no submission slips in)."""
        with self._lock:
            engine = self._engines.get(model_name)
            if engine is None or any(live.engine is engine for live in self._live.values()):
                return None
            del self._engines[model_name]
        logger.info("model %s leaves the engine loop", model_name)
        return engine

    def evict_engine(self, model_name: str, reason: str) -> EngineLike | None:
        """Stop ticking a model's engine now, ending each of its live processes with an error
        (`reason`); for an engine being rebuilt or given up. None if it is not here."""
        with self._lock:
            engine = self._engines.pop(model_name, None)
            if engine is None:
                return None
            doomed = {pid: e for pid, e in self._live.items() if e.engine is engine}
            for pid in doomed:
                del self._live[pid]
        self._fail_sinks(doomed, reason)
        logger.warning("model %s leaves the engine loop: %s", model_name, reason)
        return engine

    def engine(self, model_name: str) -> EngineLike | None:
        return self._engines.get(model_name)

    def arm_fault(self, model_name: str, kind: str, count: int, hang_s: float = 0.0) -> None:
        """Test-only (`api.enable_fault_injection`): the next `count` ticks of `model_name`
        that run a batch fail (`error`) or block for `hang_s` (`hang`), inside the real tick;
        the faults stay armed across engine rebuilds."""
        if kind not in ("error", "hang"):
            raise ValueError(f"unknown fault kind {kind!r}")
        with self._lock:
            armed = self._faults.setdefault(model_name, collections.deque())
            armed.extend([(kind, hang_s)] * count)
            engine = self._engines.get(model_name)
            if engine is not None and hasattr(engine, "faults"):
                engine.faults = armed
        self._wakeup.set()

    def add_task(self, task: Tickable) -> None:
        """Tick `task` (batch work such as a fine-tuning job) between the engines' ticks."""
        with self._lock:
            if task.name in self._tasks:
                raise ValueError(f"a task named {task.name} is already in the engine loop")
            self._tasks[task.name] = task
        self._wakeup.set()

    def remove_task(self, name: str) -> Tickable | None:
        with self._lock:
            return self._tasks.pop(name, None)

    @property
    def model_names(self) -> list[str]:
        return list(self._engines)

    def num_live_of(self, model_name: str) -> int:
        """Live processes of one model."""
        with self._lock:
            return sum(1 for live in self._live.values() if live.engine.model_name == model_name)

    # ---- submission and control (any thread) -----------------------------------------------

    def submit(
        self,
        prompts: Sequence[tuple[list[int], SamplingParams]],
        sink: Sink,
        *,
        engine: EngineLike | None = None,
        owner: str = "local",
        priority: Priority = Priority.NORMAL,
        arrival_s: float | None = None,
    ) -> list[int]:
        """Admit all of `prompts` as processes of `engine` (default: the first engine added)
        feeding `sink`, or none of them.

        Raises Overloaded (queue full or draining), KernelDead, ModelNotResident (the engine
        left the loop), or the engine's own validation errors (ContextTooLong, InvalidRequest).
        The count check and the registration happen under one lock, so a burst can never
        overshoot the bound.
        """
        arrival_s = time.monotonic() if arrival_s is None else arrival_s
        with self._lock:
            engine = self._admissible(engine)
            self._check_admission(len(prompts), engine.model_name)
            pids: list[int] = []
            try:
                for token_ids, params in prompts:
                    pid = engine.submit(token_ids, params, owner=owner, priority=priority)
                    assert pid not in self._live, f"pid {pid} reused: engines must share pids"
                    pids.append(pid)
                    self._live[pid] = _Live(sink=sink, engine=engine, arrival_s=arrival_s)
            except BaseException:
                for pid in pids:
                    self._live.pop(pid, None)
                    engine.kill(pid)
                raise
        self._wakeup.set()
        return pids

    def _admissible(self, engine: EngineLike | None) -> EngineLike:
        if engine is None:
            engine = next(iter(self._engines.values()), None)
            if engine is None:
                raise ModelNotResident("No model is resident.", hint="load a model first")
        elif self._engines.get(engine.model_name) is not engine:
            raise ModelNotResident(
                f"The model {engine.model_name!r} was unloaded before the request was admitted.",
                hint="retry the request",
            )
        return engine

    def check_open(self, model_name: str) -> None:
        """Raise what `submit` would for any request now (kernel dead, draining), e.g. before
        spending seconds loading a model for a request that cannot be admitted."""
        with self._lock:
            self._check_admission(0, model_name)

    def _check_admission(self, num_new: int, model_name: str) -> None:
        if self.dead_reason is not None:
            raise KernelDead(
                f"The engine stopped: {self.dead_reason}", hint="the server must be restarted"
            )
        if self.stalled is not None:
            self._reject("engine_stalled", model_name)
            raise Overloaded(
                f"The engine is stalled: a tick of {self.stalled} has not returned.",
                code="engine_stalled",
                hint="retry later or against another server; see the server log",
            )
        if self.is_draining or self._stopping:
            self._reject("shutting_down", model_name)
            raise Overloaded(
                "The server is shutting down and admits no new requests.",
                code="shutting_down",
                hint="retry against another server",
            )
        capacity = self.max_running + self.max_waiting
        if len(self._live) + num_new > capacity:
            self._reject("queue_full", model_name)
            raise Overloaded(
                f"The server is overloaded: {len(self._live)} processes are live and the limit "
                f"is {capacity} ({self.max_running} running + {self.max_waiting} waiting).",
                code="server_is_overloaded",
                hint="retry after a short wait",
            )

    def _reject(self, reason: str, model_name: str) -> None:
        if self.metrics is not None:
            self.metrics.model(model_name).admission_rejected(reason)

    def kill(self, pid: int) -> bool:
        live = self._live.get(pid)
        if live is None:
            return False
        ok = live.engine.kill(pid)
        self._wakeup.set()
        return ok

    def kill_all(self) -> int:
        pids = list(self._live)
        killed = sum(self.kill(pid) for pid in pids)
        return killed

    def renice(self, pid: int, priority: Priority) -> bool:
        live = self._live.get(pid)
        if live is None:
            return False
        ok = live.engine.renice(pid, priority)
        self._wakeup.set()
        return ok

    def processes(self) -> list[ProcessInfo]:
        """The process table of every resident model, by pid."""
        procs = [p for engine in self._engines_now() for p in engine.processes()]
        return sorted(procs, key=lambda p: p.pid)

    def stats(self) -> EngineStats:
        """Every resident model's stats summed; `model` lists their names."""
        return sum_stats([engine.stats() for engine in self._engines_now()])

    def stats_by_model(self) -> dict[str, EngineStats]:
        return {engine.model_name: engine.stats() for engine in self._engines_now()}

    def tokens_per_s(self) -> float:
        return self._throughput.rate(time.monotonic())

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Scrape-time numbers for `/metrics`, per resident model."""
        taus = self.predictor.stats().by_model if self.predictor is not None else {}
        out = {}
        for name, s in self.stats_by_model().items():
            out[name] = self._snapshot(s)
            if taus.get(name) is not None:
                out[name]["predictor_kendall_tau"] = cast(float, taus[name])
        return out

    def _snapshot(self, s: EngineStats) -> dict[str, float]:
        total = s.kv_blocks_total or 1
        return {
            "schedule_share": s.schedule_share,
            "schedule_seconds": s.schedule_s,
            "num_running": s.num_running,
            "num_waiting": s.num_waiting,
            "num_preempted": s.num_preempted,
            "kv_cache_usage_perc": s.kv_blocks_used / total,
            "kv_blocks_used": s.kv_blocks_used,
            "kv_blocks_cached": s.kv_blocks_cached,
            "kv_blocks_total": s.kv_blocks_total,
            "kernel_alive": float(self.is_alive),
            "num_preemptions": s.num_preemptions,
            "prefix_cache_hits": s.prefix_cache_hits,
            "prefix_cache_queries": s.prefix_cache_hits + s.prefix_cache_misses,
            "num_ticks": s.num_ticks,
        }

    def _engines_now(self) -> list[EngineLike]:
        with self._lock:
            return list(self._engines.values())

    # ---- the driver thread -----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            with self._lock:
                units: list[EngineLike | Tickable] = [
                    *self._engines.values(),
                    *self._tasks.values(),
                ]
            busy = [unit for unit in units if unit.has_work()]
            if not busy:
                self._wakeup.wait(IDLE_WAIT_S)
                self._wakeup.clear()
                self.last_tick_s = time.monotonic()
                continue
            for unit in busy:  # round robin: one tick each per round
                if not self._tick(unit):
                    return
            self._watch_preemptions(busy)

    def _watch_preemptions(self, busy: Sequence[object]) -> None:
        """Feed the storm detector each busy engine's preemption counter, once a second."""
        now_s = time.monotonic()
        if self.preemption_storms is None or now_s < self._storms_due_s:
            return
        self._storms_due_s = now_s + self.storm_check_s
        for engine in self._engines_now():
            if engine not in busy:
                continue
            try:
                count = engine.stats().num_preemptions
            except Exception:  # a broken engine's stats must not stop the driver
                logger.debug("stats of %s failed", engine.model_name, exc_info=True)
                continue
            self.preemption_storms.observe(engine.model_name, count, now_s)

    def _tick(self, unit: EngineLike | Tickable) -> bool:
        """One tick of one engine or task; False once the kernel is dead."""
        engine = unit if self._engines.get(unit.name) is unit else None
        self._ticking, self._tick_started_s = unit.name, time.monotonic()
        try:
            outputs = list(unit.step())
        except TickFailed as exc:  # the engine failed one batch and ended its processes
            outputs = exc.outputs
            self._report_failure(unit, exc.error, needs_rebuild=False)
        except Exception as exc:  # its state is unknown: end all of its processes
            logger.exception("tick of %s failed", unit.name)
            outputs = []
            self._report_failure(unit, f"{type(exc).__name__}: {exc}", needs_rebuild=True)
        except BaseException as exc:  # the driver itself is going down: tell everyone
            logger.exception("engine tick of %s failed; the kernel is dead", unit.name)
            self._die(f"{type(exc).__name__}: {exc}")
            return False
        finally:
            self._tick_started_s = None
        now_s = time.monotonic()
        self.last_tick_s = now_s
        if self.stalled is not None:
            self._end_stall()
        if outputs and engine is not None:
            self.last_progress_s = now_s
            self._dispatch(engine, outputs, now_s)
        return True

    def _report_failure(
        self, unit: EngineLike | Tickable, error: str, *, needs_rebuild: bool
    ) -> None:
        if unit.name in self._tasks:
            logger.error("task %s failed (%s); it leaves the engine loop", unit.name, error)
            self.remove_task(unit.name)
            return
        if self.metrics is not None:
            self.metrics.model(unit.name).engine_failed()
        if needs_rebuild:
            self.evict_engine(unit.name, f"the engine of {unit.name} failed: {error}")
        if self.on_engine_failure is not None:
            try:
                self.on_engine_failure(cast("EngineLike", unit), error, needs_rebuild)
            except Exception:
                logger.exception("engine failure handler failed for %s", unit.name)

    def _dispatch(self, engine: EngineLike, outputs: list[ProcessOutput], now_s: float) -> None:
        m = self.metrics.model(engine.model_name) if self.metrics is not None else None
        num_new_tokens = 0
        for out in outputs:
            with self._lock:
                live = self._live.pop(out.pid, None) if out.finished else self._live.get(out.pid)
            if live is None:
                continue
            num_new_tokens += len(out.new_token_ids)
            _record(m, live, out, now_s)
            if out.finished and self.on_process_finished is not None:
                try:
                    self.on_process_finished(engine.model_name, out)
                except Exception:
                    logger.exception("finished-process hook failed for pid %d", out.pid)
            try:
                live.sink(out)
            except Exception:
                logger.exception("subscriber of pid %d failed; killing it", out.pid)
                if not out.finished:
                    engine.kill(out.pid)
        self._throughput.add(now_s, num_new_tokens)

    def _die(self, reason: str) -> None:
        self.dead_reason = reason
        with self._lock:
            live = dict(self._live)
            self._live.clear()
        self._fail_sinks(live, f"kernel dead: {reason}")

    def _fail_sinks(self, live: dict[int, _Live], error: str) -> None:
        """End each of these processes' streams with an error output (they left `_live`)."""
        for pid, entry in live.items():
            with contextlib.suppress(Exception):
                entry.sink(
                    ProcessOutput(
                        pid=pid,
                        new_token_ids=[],
                        new_text="",
                        finished=True,
                        finish_reason=FinishReason.ERROR,
                        error=error,
                    )
                )
            if self.metrics is not None:
                self.metrics.model(entry.engine.model_name).process_finished(FinishReason.ERROR)

    # ---- the watchdog thread ---------------------------------------------------------------

    def _watch(self) -> None:
        period_s = min(0.5, self.watchdog_timeout_s / 4)
        while not self._stopping:
            time.sleep(period_s)
            started_s, name = self._tick_started_s, self._ticking
            if started_s is None or name is None:
                continue
            stuck_s = time.monotonic() - started_s
            if self.watchdog_exit_s > 0 and stuck_s > self.watchdog_exit_s:
                logger.critical(
                    "watchdog: the tick of %s has not returned for %.0f s "
                    "(kernel.watchdog_exit_s); exiting with status %d for a restart",
                    name,
                    stuck_s,
                    EXIT_STALLED,
                )
                for handler in logging.getLogger().handlers:
                    with contextlib.suppress(Exception):
                        handler.flush()
                self.exit_process(EXIT_STALLED)
                return
            if stuck_s > self.watchdog_timeout_s and self.stalled is None:
                self._begin_stall(name, stuck_s)

    def _begin_stall(self, name: str, stuck_s: float) -> None:
        """The driver is stuck in one tick: no process of any engine moves until it returns."""
        self.stalled = name
        logger.error(
            "watchdog: the tick of %s has not returned for %.1f s (kernel.watchdog_timeout_s); "
            "ending every live stream. Thread stacks:\n%s",
            name,
            stuck_s,
            thread_stacks(),
        )
        with self._lock:
            live = dict(self._live)
            self._live.clear()
        for pid, entry in live.items():
            with contextlib.suppress(Exception):
                entry.engine.kill(pid)  # takes effect when the tick returns
        self._fail_sinks(live, f"the engine of {name} stalled: a tick did not return")
        if self.on_stall is not None:
            self.on_stall(name, True)

    def _end_stall(self) -> None:
        name, self.stalled = self.stalled, None
        logger.warning("watchdog: the tick of %s returned; the engine ticks again", name)
        if self.on_stall is not None and name is not None:
            self.on_stall(name, False)

    # ---- asyncio hand-off -------------------------------------------------------------------

    def open_stream(
        self,
        prompts: Sequence[tuple[list[int], SamplingParams]],
        *,
        engine: EngineLike | None = None,
        owner: str = "local",
        priority: Priority = Priority.NORMAL,
        arrival_s: float | None = None,
    ) -> OutputStream:
        """Submit `prompts` from a coroutine; their outputs arrive on the returned stream."""
        stream = OutputStream(self, asyncio.get_running_loop())
        stream.pids = self.submit(
            prompts,
            stream.put_threadsafe,
            engine=engine,
            owner=owner,
            priority=priority,
            arrival_s=arrival_s,
        )
        stream.unfinished = set(stream.pids)
        return stream


def _record(m: ModelMetrics | None, live: _Live, out: ProcessOutput, now_s: float) -> None:
    """Latency and token series for one output of one process."""
    if out.new_token_ids:
        if live.first_token_s is None:
            live.first_token_s = now_s
            if m is not None:
                m.ttft_s.observe(now_s - live.arrival_s)
                m.prompt_tokens.inc(out.num_prompt_tokens)
                m.cached_prompt_tokens.inc(out.num_cached_tokens)
        elif m is not None and live.last_token_s is not None:
            gap_s = (now_s - live.last_token_s) / len(out.new_token_ids)
            for _ in out.new_token_ids:
                m.itl_s.observe(gap_s)
        live.last_token_s = now_s
        if m is not None:
            m.generation_tokens.inc(len(out.new_token_ids))
    if out.finished and out.kernel_times is not None:
        out.timing = RequestTiming.of(live.arrival_s, now_s, out.kernel_times, out)
        if m is not None:
            t = out.timing
            m.request_timing(t.queue_s, t.prefill_s, t.decode_s, t.preempted_s)
    if out.finished and m is not None:
        m.e2e_s.observe(now_s - live.arrival_s)
        m.process_finished(out.finish_reason or FinishReason.STOP)


def thread_stacks() -> str:
    """Every Python thread's stack, for the log of a stalled tick."""
    frames = sys._current_frames()
    parts = []
    for thread in threading.enumerate():
        frame = frames.get(thread.ident) if thread.ident is not None else None
        if frame is not None:
            stack = "".join(traceback.format_stack(frame))
            parts.append(f"--- thread {thread.name} ---\n{stack}")
    return "\n".join(parts)


def sum_stats(parts: Sequence[EngineStats]) -> EngineStats:
    """Several engines' stats as one: counts added, names joined, block size of the first."""
    total = EngineStats(model=", ".join(s.model for s in parts))
    for f in dataclasses.fields(EngineStats):
        if f.name in ("model", "extra", "kv_block_size"):
            continue
        setattr(total, f.name, sum(getattr(s, f.name) for s in parts))
    total.kv_block_size = parts[0].kv_block_size if parts else 0
    return total


class OutputStream:
    """The outputs of a group of processes on one asyncio queue, in tick order.

    Iterate with `async for`; call `cancel()` (or leave the `async with` block) to kill every
    process not yet finished, e.g. when the client disconnected.
    """

    def __init__(self, loop: EngineLoop, aio_loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._aio_loop = aio_loop
        self._queue: asyncio.Queue[ProcessOutput] = asyncio.Queue()
        self.pids: list[int] = []
        self.unfinished: set[int] = set()

    def put_threadsafe(self, out: ProcessOutput) -> None:
        # The event loop may be gone (server shutting down); the process is then orphaned and
        # killed by the driver because this raises.
        self._aio_loop.call_soon_threadsafe(self._queue.put_nowait, out)

    async def __aiter__(self) -> AsyncIterator[ProcessOutput]:
        while self.unfinished:
            out = await self._queue.get()
            if out.finished:
                self.unfinished.discard(out.pid)
            yield out

    def cancel(self) -> None:
        for pid in list(self.unfinished):
            self._loop.kill(pid)

    async def __aenter__(self) -> OutputStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.unfinished:
            logger.debug("cancelling pids %s", sorted(self.unfinished))
            self.cancel()
