"""The program loader: which models are resident; load on demand, preload by forecast demand,
unload the idle model predicted to be needed least.

A request may name any model its source (the registry) knows. A model that is not resident is
loaded on a single loader thread (never the event loop, never the driver thread, so resident
models keep ticking) and joins the one engine loop. Invariants: at most `max_resident` models are
resident, the ones beyond are refused rather than loaded; a model with live processes, held by a
request being admitted, or pinned by an admin (`pin_model`) is never unloaded; concurrent
requests for one model load it once and share the outcome, failure included; a model that fails
to load leaves the others serving. Every load, failed load and unload is reported to the event
log with its reason. Which idle model goes first, and what to preload, is decided by the pure
functions of `llmos.kernel.preload` from the demand forecast of `llmos.kernel.demand`
(docs/design/preload.md).
"""

from __future__ import annotations

import gc
import logging
import math
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
from llmos.kernel.demand import DemandHistory, Forecast
from llmos.kernel.loop import EngineLike, EngineLoop
from llmos.kernel.outputs import ProcessOutput
from llmos.kernel.preload import Candidate, Preload, eviction_order, plan_preload
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
# A model used within this many demand windows is never unloaded to make room for a preload.
PRELOAD_MIN_IDLE_WINDOWS = 0.25


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


class PinStore(Protocol):
    """Where admin pins persist (`llmos.storage.demand` in a server), so a restart keeps them."""

    def load_pins(self) -> list[str]:
        """The pinned model ids."""
        ...

    def save_pin(self, model_id: str, is_pinned: bool) -> None:
        """Store (or drop) the pin of `model_id`."""
        ...


@dataclass(slots=True)
class _Resident:
    engine: ServedEngine
    # False: the start model came from a path or a package, not the source; None: not known yet
    is_reloadable: bool | None
    last_used_s: float
    num_pins: int = 0  # requests being admitted that hold it (not admin pins: `_pinned`)
    num_bytes: int = 0  # measured after loading (weights + KV pool + swap area)
    is_preloaded: bool = False  # loaded by forecast demand, not yet used by a request
    is_used: bool = False  # a request used it since it was loaded (`last_used_s` is its time)


@dataclass(frozen=True, slots=True)
class ResidencyInfo:
    """Why one model is resident (or pinned but not), as `/os/residency` and `models ps` show."""

    model: str
    state: str  # resident | loading | not_loaded (a pinned model that is not resident)
    reasons: list[str]  # codes: pinned reserved busy loading preloaded predicted_demand ...
    why: str  # the reasons in words, with the numbers
    num_bytes: int  # measured (resident) or estimated to load (0: unknown)
    num_live: int  # live processes
    predicted_requests: float  # forecast for the next demand window
    predicted_tokens: float
    idle_s: float | None  # seconds since a request last used it (None: none since its load)
    is_pinned: bool
    note: str | None = None  # why a pinned model is not resident


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
        demand: DemandHistory | None = None,
        pins: PinStore | None = None,
        preload_min_requests: float = 1.0,
        is_preloading: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.loop = loop
        self.source = source
        self.max_resident = max_resident
        self.memory_budget_bytes = memory_budget_bytes  # 0: no budget
        self.supervisor = supervisor or Supervisor()
        loop.on_engine_failure = self._on_engine_failure
        loop.on_stall = self._on_stall
        loop.on_process_finished = self._on_process_finished
        # Demand per model and its forecast (an empty history predicts nothing: pure LRU).
        self.demand = demand or DemandHistory()
        self.preload_min_requests = preload_min_requests
        self.is_preloading = is_preloading
        self.clock = clock  # monotonic seconds for recency (a benchmark injects its own)
        self.pin_store = pins
        self._pinned: set[str] = set()  # admin pins: never unloaded
        self._pin_notes: dict[str, str] = {}  # why a pinned model is not resident
        # Models a user holds a reservation on (filled by the reservations subsystem): their
        # reason shows in `report`, and they are unloaded after every unreserved idle model.
        self.reserved: set[str] = set()
        self._planner: threading.Thread | None = None
        self._planner_stop = threading.Event()
        self.num_loads_on_demand = 0  # loads a request started and waited for (cold loads)
        self.num_preloads = 0  # loads started by the forecast
        self._preload_failed_s: dict[str, float] = {}  # not retried within a demand window
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
                engine, is_reloadable, self.clock(), num_bytes=num_bytes
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
            r.last_used_s = self.clock()
            r.is_preloaded = False
            r.is_used = True
            return r.engine

    def release(self, model_id: str) -> None:
        with self._lock:
            r = self._resident.get(model_id)
            if r is not None and r.num_pins > 0:
                r.num_pins -= 1

    # ---- loading and unloading ---------------------------------------------------------------

    def request(self, model_id: str, *, is_cold: bool = True) -> Future[ServedEngine]:
        """A future that completes once `model_id` is resident: already done, shared with a
        load in progress, or a new load queued on the loader thread (counted as a cold load
        unless `is_cold=False`: a pin's load)."""
        self.supervisor.check_available(model_id)
        with self._lock:
            r = self._resident.get(model_id)
            if r is not None:
                done: Future[ServedEngine] = Future()
                done.set_result(r.engine)
                return done
            pending = self._loading.get(model_id)
            if pending is None:
                self.num_loads_on_demand += is_cold
                pending = self._loader.submit(self._load, model_id)
                self._loading[model_id] = pending
            return pending

    def load(self, model_id: str) -> ServedEngine:
        """Make `model_id` resident (blocking); raises what the load raised."""
        return self.request(model_id).result()

    def unload(self, model_id: str, *, then: Callable[[], object] | None = None) -> bool:
        """Unload `model_id` if resident (Conflict while it has live processes or pins, or is
        pinned by an admin), then run `then` on the loader thread, so no load of the model can
        slip in between. Returns whether it was resident."""
        return self._loader.submit(self._unload, model_id, then).result()

    def close(self) -> None:
        self.stop_planner()
        self._loader.shutdown(wait=False, cancel_futures=True)

    def _unload(self, model_id: str, then: Callable[[], object] | None) -> bool:
        with self._lock:
            if model_id in self._pinned:
                raise Conflict(
                    f"The model {model_id} is pinned resident.",
                    hint=f"unpin it first: llmos models unpin {model_id}",
                )
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

    def _load(self, model_id: str, preload: Preload | None = None) -> ServedEngine:
        """Runs on the loader thread: check, make room, load, join the engine loop. A preload
        unloads only the idle models its plan names, and gives up if that is not room enough."""
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
                if preload is not None:
                    self._evict_for_preload(preload)
                self._make_room(model_id, need, may_evict=preload is None)
                engine = self._guarded(model_id, lambda: self.source.load(model_id, self.loop.pids))
            num_bytes = engine.memory_bytes()
            self.loop.add_engine(engine)
            with self._lock:
                self._resident[model_id] = _Resident(
                    engine,
                    is_reloadable,
                    self.clock(),
                    num_bytes=num_bytes,
                    is_preloaded=preload is not None,
                )
                self._pin_notes.pop(model_id, None)
            load_s = time.monotonic() - started_s
            why = self._preload_why(model_id) if preload is not None else ""
            logger.info("model %s resident (loaded in %.1f s)%s", model_id, load_s, why)
            self.events.record(
                EventKind.MODEL_LOADED,
                model=model_id,
                message=f"{model_id} loaded in {load_s:.1f} s{why}",
                load_s=round(load_s, 3),
                preloaded=preload is not None,
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

    # ---- admin pins: `llmos models pin`; a pinned model is never unloaded ---------------------

    @property
    def pinned(self) -> list[str]:
        with self._lock:
            return sorted(self._pinned)

    def pin_model(self, model_id: str) -> Future[ServedEngine]:
        """Pin `model_id` resident (stored, so a restart keeps it) and load it if need be;
        returns the load's future. Conflict, with the numbers, when the pinned models would
        not all fit `max_resident` or the memory budget."""
        with self._lock:
            is_pinned = model_id in self._pinned
            pins = sorted(self._pinned | {model_id})
        if is_pinned:
            return self._load_pinned(model_id)
        if len(pins) > self.max_resident:
            raise Conflict(
                f"Cannot pin {model_id}: {len(pins)} pinned models ({', '.join(pins)}) would "
                f"exceed kernel.max_resident_models ({self.max_resident}).",
                hint="unpin one first (llmos models unpin), or raise kernel.max_resident_models",
            )
        self._check_pins_fit(model_id, pins)
        if self.pin_store is not None:
            self.pin_store.save_pin(model_id, True)
        with self._lock:
            self._pinned.add(model_id)
        self.events.record(
            EventKind.MODEL_PINNED,
            model=model_id,
            message=f"{model_id} pinned resident",
            pinned=True,
        )
        return self._load_pinned(model_id)

    def _check_pins_fit(self, model_id: str, pins: list[str]) -> None:
        budget = self.memory_budget_bytes
        if not budget:
            return
        sizes: dict[str, int] = {}
        for mid in pins:
            with self._lock:
                r = self._resident.get(mid)
            sizes[mid] = r.num_bytes if r is not None else self.source.load_bytes(mid)
        need = sum(sizes.values())
        if need > budget:
            mib = 1 << 20
            parts = ", ".join(f"{mid} {n // mib} MiB" for mid, n in sizes.items())
            raise Conflict(
                f"Cannot pin {model_id}: the pinned models would need about {need // mib} MiB "
                f"({parts}; measured when resident, else the load estimate), more than the "
                f"memory budget of {budget // mib} MiB.",
                hint="unpin one first (llmos models unpin), or raise kernel.memory_budget_bytes",
            )

    def unpin_model(self, model_id: str) -> bool:
        """Drop the pin of `model_id` (it stays resident until room is needed); returns whether
        it was pinned."""
        with self._lock:
            was_pinned = model_id in self._pinned
        if not was_pinned:
            return False
        if self.pin_store is not None:
            self.pin_store.save_pin(model_id, False)
        with self._lock:
            self._pinned.discard(model_id)
            self._pin_notes.pop(model_id, None)
        self.events.record(
            EventKind.MODEL_PINNED, model=model_id, message=f"{model_id} unpinned", pinned=False
        )
        return True

    def restore_pins(self) -> list[str]:
        """At start: read the stored pins and load each pinned model that is not resident (on
        the loader thread). A pin that cannot be loaded stays, with its reason in `report` and
        the event log. Returns the pinned ids."""
        stored = self.pin_store.load_pins() if self.pin_store is not None else []
        for model_id in stored:
            with self._lock:
                self._pinned.add(model_id)
            if self.source.find(model_id) != model_id and not self.is_resident(model_id):
                self._pin_notes[model_id] = "not in the registry any more"
                self.events.record(
                    EventKind.MODEL_LOAD_FAILED,
                    model=model_id,
                    message=f"pinned model {model_id} is not in the registry; not loaded",
                    code="model_not_found",
                )
                continue
            self._load_pinned(model_id)
        return stored

    def _load_pinned(self, model_id: str) -> Future[ServedEngine]:
        """Load a pinned model; its failure is kept as the pin's note (and reported)."""
        try:
            future = self.request(model_id, is_cold=False)
        except LlmosError as exc:
            self._pin_failed(model_id, exc)
            failed: Future[ServedEngine] = Future()
            failed.set_exception(exc)
            return failed

        def noted(done: Future[ServedEngine]) -> None:
            exc = done.exception()
            if exc is not None:
                self._pin_failed(model_id, exc)

        future.add_done_callback(noted)
        return future

    def _pin_failed(self, model_id: str, exc: BaseException) -> None:
        what = exc.message if isinstance(exc, LlmosError) else f"{type(exc).__name__}: {exc}"
        self._pin_notes[model_id] = what
        logger.warning("pinned model %s is not resident: %s", model_id, what)
        self.events.record(
            EventKind.MODEL_LOAD_FAILED,
            model=model_id,
            severity=Severity.WARNING,
            message=f"pinned model {model_id} could not be loaded: {what}",
            code=getattr(exc, "code", "internal_error"),
            pinned=True,
        )

    # ---- demand and preloading ---------------------------------------------------------------

    def note_request(self, model_id: str) -> None:
        """Count one request for `model_id` (resident or not) in its demand history."""
        self.demand.record(model_id, num_requests=1)

    def _on_process_finished(self, model_id: str, out: ProcessOutput) -> None:
        """From the driver thread: count a finished process's tokens (a dict update)."""
        self.demand.record(model_id, num_tokens=out.num_prompt_tokens + out.num_output_tokens)

    def start_planner(self, interval_s: float) -> None:
        """Every `interval_s`: persist the demand history and preload what the forecast asks
        for (a thread that only plans; loads run on the loader thread)."""
        if self._planner is not None or interval_s <= 0:
            return

        def run() -> None:
            while not self._planner_stop.wait(interval_s):
                try:
                    self.plan()
                except Exception:  # a planner failure must not end planning
                    logger.exception("residency planner failed")

        self._planner = threading.Thread(target=run, name="llmos-planner", daemon=True)
        self._planner.start()

    def stop_planner(self) -> None:
        self._planner_stop.set()
        if self._planner is not None:
            self._planner.join(timeout=5)
            self._planner = None
        try:
            self.demand.flush()
        except Exception:
            logger.warning("demand history not saved at stop", exc_info=True)

    def plan(self) -> Future[ServedEngine] | None:
        """One planning round: save the demand history, then start at most one preload (the
        model the forecast wants most that is not resident and fits once idle models predicted
        to be needed less are unloaded). Returns the preload's future, or None."""
        try:
            self.demand.flush()
        except Exception:
            logger.warning("demand history not saved (kept for the next round)", exc_info=True)
        if not self.is_preloading:
            return None
        plan = self._plan_preload()
        if plan is None:
            return None
        with self._lock:
            if plan.model_id in self._resident or plan.model_id in self._loading:
                return None
            self.num_preloads += 1
            future = self._loader.submit(self._load, plan.model_id, plan)
            self._loading[plan.model_id] = future

        def failed(done: Future[ServedEngine]) -> None:
            exc = done.exception()
            if exc is not None:  # already logged and reported by the load
                logger.info("preload of %s gave up: %s", plan.model_id, exc)
                self._preload_failed_s[plan.model_id] = self.clock()

        future.add_done_callback(failed)
        return future

    def _plan_preload(self) -> Preload | None:
        with self._lock:
            resident = set(self._resident)
            busy_loading = bool(self._loading)
            wanted = (set(self.demand.models) | self._pinned) - resident
        if busy_loading:
            return None  # one load at a time; plan again next round
        forecasts = self.demand.forecasts(resident | wanted)
        extra: dict[str, int] = {}
        now_s = self.clock()
        for mid in sorted(wanted):
            f = forecasts[mid]
            # Preloading needs a day of the model's history: on recency alone it would only
            # bring back what was just unloaded for another model.
            if (
                f.requests < self.preload_min_requests or not f.num_days
            ) and mid not in self._pinned:
                continue
            if now_s - self._preload_failed_s.get(mid, -math.inf) < self.demand.window_s:
                continue
            try:
                self.supervisor.check_available(mid)
                if self.source.find(mid) != mid:
                    continue
                extra[mid] = self.source.load_bytes(mid)
            except LlmosError:
                continue
        if not extra:
            return None
        for rid, r in list(self._resident.items()):
            if r.is_reloadable is None:
                r.is_reloadable = self.source.find(rid) == rid
        with self._lock:
            candidates = self._candidates(forecasts, extra)
        return plan_preload(
            candidates,
            max_resident=self.max_resident,
            budget_bytes=self.memory_budget_bytes,
            min_requests=self.preload_min_requests,
        )

    def _evict_for_preload(self, plan: Preload) -> None:
        """Unload the idle models `plan` names (loader thread); a model that became busy,
        pinned or wanted since the plan stays, and the preload then gives up if no room."""
        freed: list[tuple[str, float, float]] = []
        with self._lock:
            forecasts = self.demand.forecasts([*plan.evict, plan.model_id])
            for victim in plan.evict:
                r = self._resident.get(victim)
                if r is None or victim in self._pinned or r.num_pins or not r.is_reloadable:
                    continue
                if forecasts[victim].requests >= forecasts[plan.model_id].requests:
                    continue
                if self.loop.remove_engine(victim) is None:
                    continue
                freed.append((victim, self.clock() - r.last_used_s, forecasts[victim].requests))
                self._forget(victim)
        for victim, idle_s, predicted in freed:
            logger.info("model %s unloaded to preload %s", victim, plan.model_id)
            self._record_eviction(victim, plan.model_id, EvictReason.PRELOAD, idle_s, predicted)
        if freed:
            gc.collect()

    def _preload_why(self, model_id: str) -> str:
        f = self.demand.forecast(model_id)
        return (
            f" (preloaded: predicted {f.requests:.1f} requests in the next "
            f"{format_duration_s(f.window_s)})"
        )

    # ---- why each model is resident -----------------------------------------------------------

    def report(self) -> list[ResidencyInfo]:
        """Each resident, loading or pinned model and why it is there, most wanted first."""
        now_s = self.clock()
        with self._lock:
            resident = dict(self._resident)
            loading = set(self._loading)
            pinned = set(self._pinned)
            notes = dict(self._pin_notes)
        ids = set(resident) | loading | pinned
        forecasts = self.demand.forecasts(ids)
        out = []
        for mid in ids:
            r = resident.get(mid)
            f = forecasts[mid]
            num_live = self.loop.num_live_of(mid) if r is not None else 0
            idle_s = now_s - r.last_used_s if r is not None and r.is_used else None
            state = "resident" if r is not None else "loading" if mid in loading else "not_loaded"
            reasons, words = self._reasons(mid, r, state, f, num_live, idle_s, pinned)
            out.append(
                ResidencyInfo(
                    model=mid,
                    state=state,
                    reasons=reasons,
                    why="; ".join(words) if words else "idle (first to unload)",
                    num_bytes=r.num_bytes if r is not None else 0,
                    num_live=num_live,
                    predicted_requests=round(f.requests, 3),
                    predicted_tokens=round(f.tokens, 1),
                    idle_s=round(idle_s, 1) if idle_s is not None else None,
                    is_pinned=mid in pinned,
                    note=notes.get(mid) if r is None else None,
                )
            )
        out.sort(key=lambda i: (not i.is_pinned, -i.predicted_requests, i.idle_s or 0, i.model))
        return out

    def _reasons(
        self,
        mid: str,
        r: _Resident | None,
        state: str,
        f: Forecast,
        num_live: int,
        idle_s: float | None,
        pinned: set[str],
    ) -> tuple[list[str], list[str]]:
        codes: list[str] = []
        words: list[str] = []
        window = format_duration_s(self.demand.window_s)

        def add(code: str, text: str) -> None:
            codes.append(code)
            words.append(text)

        if mid in pinned:
            add("pinned", "pinned (llmos models pin)")
        if mid in self.reserved:
            add("reserved", "a user holds a reservation on it")
        if state == "loading":
            add("loading", "loading")
        if num_live or (r is not None and r.num_pins):
            add("busy", f"{num_live} live processes")
        if r is not None and r.is_reloadable is False:
            add("start_model", "the start model, loaded from a path (never unloaded)")
        if r is not None and r.is_preloaded:
            add("preloaded", "preloaded for its predicted demand, not used yet")
        if f.requests >= self.preload_min_requests:
            add(
                "predicted_demand",
                f"predicted demand {f.requests:.1f} requests in the next {window}",
            )
        if idle_s is not None and idle_s < self.demand.window_s:
            add("recently_used", f"used {format_duration_s(idle_s)} ago")
        return codes, words

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
                engine, is_reloadable, self.clock(), num_bytes=engine.memory_bytes()
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

    def _make_room(self, model_id: str, need_bytes: int = 0, *, may_evict: bool = True) -> None:
        """Unload idle models, the one predicted to be needed least first (then the least
        recently used), until one more fits the count and the memory budget; else raise
        Overloaded / InsufficientMemory. `may_evict=False` (a preload) only checks."""
        for rid, r in list(self._resident.items()):
            if r.is_reloadable is None:
                r.is_reloadable = self.source.find(rid) == rid
        freed: list[tuple[str, float, EvictReason, float]] = []  # (id, idle s, why, predicted)
        budget = self.memory_budget_bytes
        with self._lock:
            forecasts = self.demand.forecasts(self._resident)
            while len(self._resident) >= self.max_resident or (
                budget and sum(r.num_bytes for r in self._resident.values()) + need_bytes > budget
            ):
                by_count = len(self._resident) >= self.max_resident
                order = eviction_order(self._candidates(forecasts)) if may_evict else []
                victim = next(
                    (rid for rid in order if self.loop.remove_engine(rid) is not None), None
                )
                lru = min(order, key=lambda rid: self._resident[rid].last_used_s, default=None)
                if victim is None and not by_count:
                    used = sum(r.num_bytes for r in self._resident.values())
                    raise InsufficientMemory(model_id, need_bytes, budget, used, never=False)
                if victim is None:
                    raise self._models_busy(model_id)
                why = EvictReason.MEMORY
                if by_count:
                    why = EvictReason.LRU if victim == lru else EvictReason.DEMAND
                idle_s = self.clock() - self._resident[victim].last_used_s
                freed.append((victim, idle_s, why, forecasts[victim].requests))
                self._forget(victim)
                logger.info("model %s unloaded (%s) to load %s", victim, why.value, model_id)
        for victim, idle_s, why, predicted in freed:
            self._record_eviction(victim, model_id, why, idle_s, predicted)
        if freed:
            gc.collect()  # give the unloaded weights and KV pool back before loading more

    def _models_busy(self, model_id: str) -> Overloaded:
        pinned = sorted(self._pinned & set(self._resident))
        also = f"; pinned: {', '.join(pinned)}" if pinned else ""
        return Overloaded(
            f"Cannot load {model_id}: all {len(self._resident)} resident models "
            f"({', '.join(self._resident)}) are busy or pinned{also}, and "
            f"kernel.max_resident_models is {self.max_resident}.",
            code="models_busy",
            hint="retry when a resident model is idle, unpin one (llmos models unpin), or raise "
            "kernel.max_resident_models",
        )

    def _record_eviction(
        self, victim: str, for_model: str, why: EvictReason, idle_s: float, predicted: float
    ) -> None:
        what = {
            EvictReason.LRU: "least recently used",
            EvictReason.MEMORY: "to fit the memory budget",
            EvictReason.DEMAND: "lowest predicted demand",
            EvictReason.PRELOAD: f"predicted to be needed less than {for_model}, preloaded",
        }[why]
        window = format_duration_s(self.demand.window_s)
        self.events.record(
            EventKind.MODEL_EVICTED,
            model=victim,
            message=f"{victim} unloaded to make room for {for_model} ({what}: idle "
            f"{format_duration_s(idle_s)}, predicted {predicted:.1f} requests in the next "
            f"{window})",
            reason=why.value,
            for_model=for_model,
            idle_s=round(idle_s, 1),
            predicted_requests=round(predicted, 3),
        )

    def _candidates(
        self, forecasts: dict[str, Forecast], extra: dict[str, int] | None = None
    ) -> list[Candidate]:
        """Every resident model (and each of `extra`: id -> estimated load bytes) as the
        residency policy sees it (caller holds the lock)."""
        recent_s = self.clock() - PRELOAD_MIN_IDLE_WINDOWS * self.demand.window_s
        out = [
            Candidate(
                rid,
                r.num_bytes,
                forecasts[rid].requests if rid in forecasts else 0.0,
                r.last_used_s,
                is_resident=True,
                is_pinned=rid in self._pinned,
                is_reserved=rid in self.reserved,
                is_busy=r.num_pins > 0 or self.loop.num_live_of(rid) > 0,
                is_reloadable=bool(r.is_reloadable),
                is_recent=r.last_used_s > recent_s,
            )
            for rid, r in self._resident.items()
        ]
        for mid, num_bytes in (extra or {}).items():
            if mid not in self._resident:
                predicted = forecasts[mid].requests if mid in forecasts else 0.0
                out.append(
                    Candidate(
                        mid,
                        num_bytes,
                        predicted,
                        0.0,
                        is_resident=False,
                        is_pinned=mid in self._pinned,
                        is_reserved=mid in self.reserved,
                    )
                )
        return out

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
