"""The program loader: which models are resident; load on demand, unload the least recently used.

A request may name any model its source (the registry) knows. A model that is not resident is
loaded on a single loader thread (never the event loop, never the driver thread, so resident
models keep ticking) and joins the one engine loop. Invariants: at most `max_resident` models are
resident, the ones beyond are refused rather than loaded; a model with live processes, or pinned
by a request being admitted, is never unloaded; concurrent requests for one model load it once and
share the outcome, failure included; a model that fails to load leaves the others serving.
Every load, failed load and unload is reported to the event log with its reason.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from llmos.errors import (
    Conflict,
    InsufficientMemory,
    LlmosError,
    ModelNotResident,
    NotFound,
    Overloaded,
)
from llmos.kernel.loop import EngineLike, EngineLoop
from llmos.kernel.supervisor import Action, HealthView, Supervisor
from llmos.monitor.events import (
    EventKind,
    EventSink,
    EvictReason,
    NoEvents,
    Severity,
    format_duration_s,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")


class ServedEngine(EngineLike, Protocol):
    """An engine as the API uses it: the driver's part plus the tokenizer and limits."""

    tokenizer: Any
    chat_template: str | None
    max_model_len: int
    profile: dict[str, Any]  # the model's defaults (temperature, ..., system, stop); {}: none

    def rebuild(self) -> ServedEngine:
        """A fresh engine (new KV pool and process table) around the same weights."""
        ...

    def memory_bytes(self) -> int:
        """Bytes of the tensors it holds (weights, KV pool, swap area)."""
        ...


class ModelSource(Protocol):
    """Where models come from: which names exist, and how to build an engine for one."""

    def find(self, name: str) -> str | None:
        """The model id `name` refers to, or None (nothing is opened from a name)."""
        ...

    def check(self, model_id: str) -> None:
        """Raise if `model_id` cannot be loaded (e.g. a corrupted file), before room is made."""
        ...

    def load(self, model_id: str, pids: Iterator[int]) -> ServedEngine:
        """A new engine serving `model_id`, drawing pids from `pids`."""
        ...

    def load_bytes(self, model_id: str) -> int:
        """The most memory loading `model_id` takes (an estimate from its files)."""
        ...


@dataclass(slots=True)
class _Resident:
    engine: ServedEngine
    # False: the start model came from a path or a package, not the source; None: not known yet
    is_reloadable: bool | None
    last_used_s: float
    num_pins: int = 0
    num_bytes: int = 0  # measured after loading (weights + KV pool + swap area)


class Residency:
    """Resident models by id, loaded on demand into `loop`, LRU-unloaded beyond `max_resident`."""

    def __init__(
        self,
        loop: EngineLoop,
        source: ModelSource,
        *,
        max_resident: int,
        events: EventSink | None = None,
        supervisor: Supervisor | None = None,
        memory_budget_bytes: int = 0,
    ) -> None:
        self.loop = loop
        self.source = source
        self.max_resident = max_resident
        self.memory_budget_bytes = memory_budget_bytes  # 0: no budget
        self.supervisor = supervisor or Supervisor()
        loop.on_engine_failure = self._on_engine_failure
        loop.on_stall = self._on_stall
        # Engines of models the source cannot load again (a start model from a path), kept
        # after a crash loop so a rebuild is possible once the cool-down ends.
        self._parked: dict[str, ServedEngine] = {}
        self.events: EventSink = events or NoEvents()
        self._lock = threading.Lock()
        self._resident: dict[str, _Resident] = {}
        self._aliases: dict[str, str] = {}  # other names of resident models -> id
        self._loading: dict[str, Future[ServedEngine]] = {}
        # One worker: loads run one at a time (each is CPU- and memory-heavy).
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmos-loader")

    # ---- what is resident (any thread, no I/O) ----------------------------------------------

    def adopt(
        self,
        engine: ServedEngine,
        *,
        aliases: Iterable[str] = (),
        is_reloadable: bool | None = None,
    ) -> None:
        """Make an engine built elsewhere (the model `llmos serve` starts with) resident.

        `is_reloadable=None` asks the source, when it matters, whether it can load the model
        again by its id; a model that cannot be reloaded is never unloaded."""
        self.loop.add_engine(engine)
        num_bytes = engine.memory_bytes()
        with self._lock:
            self._resident[engine.model_name] = _Resident(
                engine, is_reloadable, time.monotonic(), num_bytes=num_bytes
            )
            for alias in aliases:
                if alias and alias != engine.model_name:
                    self._aliases[alias] = engine.model_name
        self.events.record(
            EventKind.MODEL_LOADED,
            model=engine.model_name,
            message=f"{engine.model_name} resident (the model the server started with)",
        )

    def lookup(self, name: str) -> str | None:
        """The id of a resident model called `name` (its id or an alias), else None."""
        if name in self._resident:
            return name
        return self._aliases.get(name)

    def aliases_of(self, model_id: str) -> list[str]:
        return sorted(a for a, target in self._aliases.items() if target == model_id)

    @property
    def resident_ids(self) -> list[str]:
        with self._lock:
            return list(self._resident)

    def is_resident(self, model_id: str) -> bool:
        return model_id in self._resident

    def health(self) -> list[HealthView]:
        """The supervisor's record of every resident model and of each one it still refuses."""
        with self._lock:
            names = set(self._resident)
        names.update(self.supervisor.models())
        return [self.supervisor.health(name) for name in sorted(names)]

    def engine(self, model_id: str) -> ServedEngine | None:
        """The engine of a resident model (for reading its limits), not pinned."""
        r = self._resident.get(model_id)
        return r.engine if r is not None else None

    def resolve(self, name: str) -> str:
        """The id of the model `name` refers to (resident or in the source), else NotFound."""
        found = self.lookup(name) or self.source.find(name)
        if found is None:
            shown = name if len(name) <= 64 else name[:61] + "..."
            raise NotFound(
                f"The model {shown!r} does not exist or is not served here.",
                code="model_not_found",
                param="model",
                hint="see GET /v1/models",
            )
        return found

    # ---- pins: a request holds its model resident until its processes are live --------------

    def pin(self, model_id: str) -> ServedEngine | None:
        """The resident engine of `model_id`, pinned (call `release`); None if not resident.
        Raises EngineUnavailable while the model is being rebuilt or in a crash loop."""
        self.supervisor.check_available(model_id)
        with self._lock:
            r = self._resident.get(model_id)
            if r is None:
                return None
            r.num_pins += 1
            r.last_used_s = time.monotonic()
            return r.engine

    def release(self, model_id: str) -> None:
        with self._lock:
            r = self._resident.get(model_id)
            if r is not None and r.num_pins > 0:
                r.num_pins -= 1

    # ---- loading and unloading ---------------------------------------------------------------

    def request(self, model_id: str) -> Future[ServedEngine]:
        """A future that completes once `model_id` is resident: already done, shared with a
        load in progress, or a new load queued on the loader thread."""
        self.supervisor.check_available(model_id)
        with self._lock:
            r = self._resident.get(model_id)
            if r is not None:
                done: Future[ServedEngine] = Future()
                done.set_result(r.engine)
                return done
            pending = self._loading.get(model_id)
            if pending is None:
                pending = self._loader.submit(self._load, model_id)
                self._loading[model_id] = pending
            return pending

    def load(self, model_id: str) -> ServedEngine:
        """Make `model_id` resident (blocking); raises what the load raised."""
        return self.request(model_id).result()

    def unload(self, model_id: str, *, then: Callable[[], object] | None = None) -> bool:
        """Unload `model_id` if resident (Conflict while it has live processes or pins), then
        run `then` on the loader thread, so no load of the model can slip in between. Returns
        whether it was resident."""
        return self._loader.submit(self._unload, model_id, then).result()

    def close(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)

    def _unload(self, model_id: str, then: Callable[[], object] | None) -> bool:
        with self._lock:
            was_resident = model_id in self._resident
            if was_resident:
                if self._resident[model_id].num_pins or self.loop.remove_engine(model_id) is None:
                    raise Conflict(
                        f"The model {model_id} has live processes; it stays resident.",
                        hint="wait for them to finish or kill them (llmos ps, llmos kill)",
                    )
                self._forget(model_id)
        if was_resident:
            gc.collect()  # give the weights and the KV pool back now
            logger.info("model %s unloaded", model_id)
            self.events.record(
                EventKind.MODEL_EVICTED,
                model=model_id,
                message=f"{model_id} unloaded on request",
                reason=EvictReason.UNLOAD.value,
            )
        if then is not None:
            then()
        return was_resident

    def _load(self, model_id: str) -> ServedEngine:
        """Runs on the loader thread: check, make room, load, join the engine loop."""
        try:
            with self._lock:
                r = self._resident.get(model_id)
            if r is not None:
                return r.engine
            started_s = time.monotonic()
            parked = self._parked.pop(model_id, None)
            is_reloadable = parked is None
            if parked is not None:  # a start model after its crash-loop cool-down
                self._make_room(model_id, parked.memory_bytes())
                engine = parked.rebuild()
                del parked
            else:
                # Checked before anything is unloaded: a corrupt model must not evict a good one,
                # nor one that can never fit the memory budget.
                self._guarded(model_id, lambda: self.source.check(model_id))
                need = self._guarded(model_id, lambda: self.source.load_bytes(model_id))
                self._check_budget(model_id, need)
                self._make_room(model_id, need)
                engine = self._guarded(model_id, lambda: self.source.load(model_id, self.loop.pids))
            num_bytes = engine.memory_bytes()
            self.loop.add_engine(engine)
            with self._lock:
                self._resident[model_id] = _Resident(
                    engine, is_reloadable, time.monotonic(), num_bytes=num_bytes
                )
            load_s = time.monotonic() - started_s
            logger.info("model %s resident (loaded in %.1f s)", model_id, load_s)
            self.events.record(
                EventKind.MODEL_LOADED,
                model=model_id,
                message=f"{model_id} loaded in {load_s:.1f} s",
                load_s=round(load_s, 3),
            )
            return engine
        finally:
            with self._lock:
                self._loading.pop(model_id, None)

    def _guarded(self, model_id: str, fn: Callable[[], T]) -> T:
        """`fn()`, its failure reported as the model being unavailable (or gone)."""
        try:
            return fn()
        except NotFound:
            raise NotFound(
                f"The model {model_id!r} is no longer in the registry.",
                code="model_not_found",
                param="model",
            ) from None
        except LlmosError as exc:
            logger.error("model %s failed to load: %s", model_id, exc)
            self._load_failed(model_id, exc.message, exc.code)
            raise _unavailable(model_id, exc.message, exc.hint) from exc
        except Exception as exc:
            logger.exception("model %s failed to load", model_id)
            self._load_failed(model_id, f"{type(exc).__name__}: {exc}", "internal_error")
            raise _unavailable(model_id, f"{type(exc).__name__}: {exc}", None) from exc

    def _load_failed(self, model_id: str, what: str, code: str) -> None:
        self.events.record(
            EventKind.MODEL_LOAD_FAILED,
            model=model_id,
            message=f"{model_id} could not be loaded: {what}",
            code=code,
        )

    # ---- self-healing (failure reports come from the driver thread) --------------------------

    def _on_engine_failure(self, engine: EngineLike, error: str, needs_rebuild: bool) -> None:
        model_id = engine.model_name
        action = self.supervisor.record_failure(model_id, error, needs_rebuild=needs_rebuild)
        logger.error("model %s: a tick failed (%s); %s", model_id, error, action.value)
        what = "all its processes" if needs_rebuild else "the processes of its batch"
        self.events.record(
            EventKind.ENGINE_FAILED,
            model=model_id,
            message=f"a tick of {model_id} failed ({error}); {what} ended with an error",
            throttle_key=model_id,  # a failing model must not flood the log
            error=error,
            action=action.value,
        )
        if action is Action.RESTART:
            self._loader.submit(self._restart, model_id)
        elif action is Action.CRASHLOOP:
            self._loader.submit(self._give_up, model_id, error)

    def _on_stall(self, model_id: str, is_stalled: bool) -> None:
        """From the watchdog: a tick of `model_id` does not return (or came back)."""
        self.supervisor.set_stalled(model_id, is_stalled)
        if is_stalled:
            self.events.record(
                EventKind.ENGINE_STALLED,
                model=model_id,
                message=f"a tick of {model_id} has not returned "
                f"(kernel.watchdog_timeout_s); live streams were ended",
            )
        else:
            self.events.record(
                EventKind.ENGINE_STALLED,
                model=model_id,
                severity=Severity.INFO,
                message=f"the stalled tick of {model_id} returned; the engine ticks again",
            )

    def _take_out(self, model_id: str, reason: str) -> ServedEngine | None:
        """Evict a model's engine (ending its live processes) and drop it from the resident
        table, keeping its aliases; returns the engine if the source cannot reload it."""
        self.loop.evict_engine(model_id, reason)
        with self._lock:
            r = self._resident.pop(model_id, None)
        if r is None:
            return self._parked.pop(model_id, None)
        return r.engine if r.is_reloadable is False else None

    def _restart(self, model_id: str) -> None:
        """Runs on the loader thread: evict, wait the backoff, rebuild, rejoin the loop."""
        keep = self._take_out(model_id, f"the engine of {model_id} is restarting after failures")
        gc.collect()
        time.sleep(self.supervisor.health(model_id).backoff_s)
        try:
            if keep is not None:
                engine = keep.rebuild()
            else:
                engine = self._guarded(model_id, lambda: self.source.load(model_id, self.loop.pids))
        except Exception as exc:
            if keep is not None:
                self._parked[model_id] = keep
            logger.error("model %s could not be rebuilt: %s", model_id, exc)
            self.supervisor.restart_failed(model_id, f"rebuild failed: {exc}")
            self.events.record(
                EventKind.ENGINE_CRASHLOOP,
                model=model_id,
                message=f"{model_id} could not be rebuilt ({exc}); refused for a while",
                error=str(exc),
            )
            return
        is_reloadable = keep is None
        del keep
        self.loop.add_engine(engine)
        with self._lock:
            self._resident[model_id] = _Resident(
                engine, is_reloadable, time.monotonic(), num_bytes=engine.memory_bytes()
            )
        self.supervisor.restarted(model_id)
        if self.loop.metrics is not None:
            self.loop.metrics.model(model_id).engine_restarted()
        restarts = self.supervisor.health(model_id).restarts
        self.events.record(
            EventKind.ENGINE_RESTARTED,
            model=model_id,
            message=f"{model_id}: engine rebuilt after repeated failures (restart {restarts})",
            restarts=restarts,
        )
        logger.warning(
            "model %s: engine rebuilt (restart %d)",
            model_id,
            self.supervisor.health(model_id).restarts,
        )

    def _give_up(self, model_id: str, error: str) -> None:
        """A crash loop: unload the model; requests are refused until the cool-down ends."""
        keep = self._take_out(model_id, f"the engine of {model_id} keeps failing ({error})")
        if keep is not None:
            self._parked[model_id] = keep
        gc.collect()
        cooldown_s = self.supervisor.policy.crashloop_cooldown_s
        self.events.record(
            EventKind.ENGINE_CRASHLOOP,
            model=model_id,
            message=f"{model_id} keeps failing ({error}); unloaded and refused for "
            f"{format_duration_s(cooldown_s)}",
            error=error,
        )
        logger.error(
            "model %s is crash-looping (%s); refused for %.0f s",
            model_id,
            error,
            self.supervisor.policy.crashloop_cooldown_s,
        )

    def used_bytes(self) -> int:
        """Measured bytes of the resident models (weights, KV pools, swap areas)."""
        with self._lock:
            return sum(r.num_bytes for r in self._resident.values())

    def _check_budget(self, model_id: str, need_bytes: int) -> None:
        """Refuse a model whose load can never fit the memory budget."""
        if self.memory_budget_bytes and need_bytes > self.memory_budget_bytes:
            raise InsufficientMemory(model_id, need_bytes, self.memory_budget_bytes, 0, never=True)

    def _make_room(self, model_id: str, need_bytes: int = 0) -> None:
        """Unload least recently used idle models until one more fits (the count and the memory
        budget), or raise Overloaded / InsufficientMemory."""
        for rid, r in list(self._resident.items()):
            if r.is_reloadable is None:
                r.is_reloadable = self.source.find(rid) == rid
        freed: list[tuple[str, float, EvictReason]] = []  # (model id, idle seconds, why)
        budget = self.memory_budget_bytes
        with self._lock:
            while len(self._resident) >= self.max_resident or (
                budget and sum(r.num_bytes for r in self._resident.values()) + need_bytes > budget
            ):
                by_count = len(self._resident) >= self.max_resident
                idle = sorted(
                    (r.last_used_s, rid)
                    for rid, r in self._resident.items()
                    if r.num_pins == 0 and r.is_reloadable
                )
                victim = next(
                    (rid for _, rid in idle if self.loop.remove_engine(rid) is not None), None
                )
                if victim is None and not by_count:
                    used = sum(r.num_bytes for r in self._resident.values())
                    raise InsufficientMemory(model_id, need_bytes, budget, used, never=False)
                if victim is None:
                    raise Overloaded(
                        f"Cannot load {model_id}: all {len(self._resident)} resident models "
                        f"({', '.join(self._resident)}) are busy and kernel.max_resident_models "
                        f"is {self.max_resident}.",
                        code="models_busy",
                        hint="retry when a resident model is idle, or raise "
                        "kernel.max_resident_models",
                    )
                why = EvictReason.LRU if by_count else EvictReason.MEMORY
                freed.append((victim, time.monotonic() - self._resident[victim].last_used_s, why))
                self._forget(victim)
                logger.info("model %s unloaded (%s) to load %s", victim, why.value, model_id)
        for victim, idle_s, why in freed:
            what = "least recently used" if why is EvictReason.LRU else "to fit the memory budget"
            self.events.record(
                EventKind.MODEL_EVICTED,
                model=victim,
                message=f"{victim} unloaded to make room for {model_id} "
                f"({what}: idle {format_duration_s(idle_s)})",
                reason=why.value,
                for_model=model_id,
                idle_s=round(idle_s, 1),
            )
        if freed:
            gc.collect()  # give the unloaded weights and KV pool back before loading more

    def _forget(self, model_id: str) -> None:
        """Drop a model from the tables (caller holds the lock and removed it from the loop)."""
        del self._resident[model_id]
        for alias in [a for a, target in self._aliases.items() if target == model_id]:
            del self._aliases[alias]


def _unavailable(model_id: str, what: str, hint: str | None) -> ModelNotResident:
    return ModelNotResident(
        f"The model {model_id!r} could not be loaded: {what}",
        code="model_unavailable",
        param="model",
        hint=f"check it with `llmos models verify {model_id}`" + (f"; {hint}" if hint else ""),
    )
