"""The engine driver: one background thread owns one Engine and ticks it while there is work.

Submissions from any thread land in the engine's inbox and wake the driver; each ProcessOutput is
handed to the subscriber registered for its pid (for asyncio callers, onto an `asyncio.Queue`
through `call_soon_threadsafe`). Invariants: a pid has a subscriber from the moment `submit`
returns until its finished output is dispatched; the number of live processes never exceeds
`max_running + max_waiting`; once the kernel is dead every live subscriber has received a
finished output with `finish_reason="error"` and every later submission raises `KernelDead`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from llmos.errors import KernelDead, Overloaded
from llmos.kernel.outputs import EngineStats, ProcessOutput
from llmos.kernel.params import SamplingParams
from llmos.kernel.process import Priority, ProcessInfo

if TYPE_CHECKING:
    from llmos.monitor.metrics import Metrics

logger = logging.getLogger(__name__)

Sink = Callable[[ProcessOutput], None]
THROUGHPUT_WINDOW_S = 5.0
IDLE_WAIT_S = 0.5


class EngineLike(Protocol):
    """The part of `llmos.kernel.engine.Engine` the driver uses."""

    model_name: str

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
    """Drives one engine from a background thread and fans its outputs out to subscribers."""

    def __init__(
        self,
        engine: EngineLike,
        *,
        max_running: int,
        max_waiting: int,
        metrics: Metrics | None = None,
    ) -> None:
        self.engine = engine
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.metrics = metrics
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._live: dict[int, _Live] = {}
        self._throughput = _Throughput()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.is_draining = False
        self.dead_reason: str | None = None
        self.last_tick_s = time.monotonic()
        self.last_progress_s = time.monotonic()
        if metrics is not None:
            metrics.add_snapshot_source(self.snapshot)

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="llmos-engine", daemon=True)
        self._thread.start()
        logger.info("engine loop started (model %s)", self.engine.model_name)

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

    # ---- submission and control (any thread) -----------------------------------------------

    def submit(
        self,
        prompts: Sequence[tuple[list[int], SamplingParams]],
        sink: Sink,
        *,
        owner: str = "local",
        priority: Priority = Priority.NORMAL,
        arrival_s: float | None = None,
    ) -> list[int]:
        """Admit all of `prompts` as processes feeding `sink`, or none of them.

        Raises Overloaded (queue full or draining), KernelDead, or the engine's own validation
        errors (ContextTooLong, InvalidRequest). The count check and the registration happen under
        one lock, so a burst can never overshoot the bound.
        """
        arrival_s = time.monotonic() if arrival_s is None else arrival_s
        with self._lock:
            self._check_admission(len(prompts))
            pids: list[int] = []
            try:
                for token_ids, params in prompts:
                    pid = self.engine.submit(token_ids, params, owner=owner, priority=priority)
                    pids.append(pid)
                    self._live[pid] = _Live(sink=sink, arrival_s=arrival_s)
            except BaseException:
                for pid in pids:
                    self._live.pop(pid, None)
                    self.engine.kill(pid)
                raise
        self._wakeup.set()
        return pids

    def _check_admission(self, num_new: int) -> None:
        if self.dead_reason is not None:
            raise KernelDead(
                f"The engine stopped: {self.dead_reason}", hint="the server must be restarted"
            )
        if self.is_draining or self._stopping:
            self._reject("shutting_down")
            raise Overloaded(
                "The server is shutting down and admits no new requests.",
                code="shutting_down",
                hint="retry against another server",
            )
        capacity = self.max_running + self.max_waiting
        if len(self._live) + num_new > capacity:
            self._reject("queue_full")
            raise Overloaded(
                f"The server is overloaded: {len(self._live)} processes are live and the limit "
                f"is {capacity} ({self.max_running} running + {self.max_waiting} waiting).",
                code="server_is_overloaded",
                hint="retry after a short wait",
            )

    def _reject(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.admission_rejected(reason)

    def kill(self, pid: int) -> bool:
        ok = self.engine.kill(pid)
        self._wakeup.set()
        return ok

    def kill_all(self) -> int:
        pids = list(self._live)
        killed = sum(self.kill(pid) for pid in pids)
        return killed

    def renice(self, pid: int, priority: Priority) -> bool:
        ok = self.engine.renice(pid, priority)
        self._wakeup.set()
        return ok

    def processes(self) -> list[ProcessInfo]:
        return self.engine.processes()

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def tokens_per_s(self) -> float:
        return self._throughput.rate(time.monotonic())

    def snapshot(self) -> dict[str, float]:
        """Scrape-time numbers for `/metrics`."""
        s = self.stats()
        total = s.kv_blocks_total or 1
        return {
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

    # ---- the driver thread -----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            if not self.engine.has_work():
                self._wakeup.wait(IDLE_WAIT_S)
                self._wakeup.clear()
                self.last_tick_s = time.monotonic()
                continue
            try:
                outputs = self.engine.step()
            except BaseException as exc:  # the kernel is dead: tell everyone, then stop
                logger.exception("engine tick failed; the kernel is dead")
                self._die(f"{type(exc).__name__}: {exc}")
                return
            now_s = time.monotonic()
            self.last_tick_s = now_s
            if outputs:
                self.last_progress_s = now_s
                self._dispatch(outputs, now_s)

    def _dispatch(self, outputs: list[ProcessOutput], now_s: float) -> None:
        num_new_tokens = 0
        for out in outputs:
            with self._lock:
                live = self._live.pop(out.pid) if out.finished else self._live.get(out.pid)
            if live is None:
                continue
            num_new_tokens += len(out.new_token_ids)
            self._record(live, out, now_s)
            try:
                live.sink(out)
            except Exception:
                logger.exception("subscriber of pid %d failed; killing it", out.pid)
                if not out.finished:
                    self.engine.kill(out.pid)
        self._throughput.add(now_s, num_new_tokens)

    def _record(self, live: _Live, out: ProcessOutput, now_s: float) -> None:
        m = self.metrics
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
        if out.finished and m is not None:
            m.e2e_s.observe(now_s - live.arrival_s)
            m.process_finished(out.finish_reason or "stop")

    def _die(self, reason: str) -> None:
        self.dead_reason = reason
        with self._lock:
            live = dict(self._live)
            self._live.clear()
        for pid, entry in live.items():
            with contextlib.suppress(Exception):
                entry.sink(
                    ProcessOutput(
                        pid=pid,
                        new_token_ids=[],
                        new_text="",
                        finished=True,
                        finish_reason="error",
                        error=f"kernel dead: {reason}",
                    )
                )
            if self.metrics is not None:
                self.metrics.process_finished("error")

    # ---- asyncio hand-off -------------------------------------------------------------------

    def open_stream(
        self,
        prompts: Sequence[tuple[list[int], SamplingParams]],
        *,
        owner: str = "local",
        priority: Priority = Priority.NORMAL,
        arrival_s: float | None = None,
    ) -> OutputStream:
        """Submit `prompts` from a coroutine; their outputs arrive on the returned stream."""
        stream = OutputStream(self, asyncio.get_running_loop())
        stream.pids = self.submit(
            prompts, stream.put_threadsafe, owner=owner, priority=priority, arrival_s=arrival_s
        )
        stream.unfinished = set(stream.pids)
        return stream


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
