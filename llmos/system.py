"""The composition root: Settings -> Storage -> Registry -> model source -> Residency -> driver.

`llmos serve`, the in-process CLI (`llmos run`, `llmos chat` without a server) and `llmos.LLM`
build what they run here and nowhere else, so there is one answer to "where does a model come
from": a path given by the user, else the registry of the data dir (the embedded default is
imported into it on first use, so it is served from verified blobs), else a packaged model the
loader knows. The kernel below knows processes, blocks and models, never files or registries.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmos.config import Settings
from llmos.errors import InvalidRequest

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from llmos.kernel.engine import Engine
    from llmos.kernel.loop import EngineLoop
    from llmos.kernel.predict import Predictor
    from llmos.kernel.reservation import Allotments
    from llmos.kernel.residency import Residency, ServedEngine
    from llmos.monitor.eventlog import EventLog
    from llmos.monitor.metrics import Metrics
    from llmos.storage.db import Database
    from llmos.storage.demand import DemandTable
    from llmos.storage.registry import Registry
    from llmos.storage.store import Storage

logger = logging.getLogger(__name__)


def open_storage(settings: Settings) -> Storage:
    """The data dir's storage (metadata DB + blobs) under `settings.storage`."""
    from llmos.storage.store import Storage

    return Storage(settings.storage)


def locate_model(ref: str | None, settings: Settings) -> tuple[str | None, str | Path]:
    """(served name, what to load) for a model reference: a path, a registry name, a package."""
    served, source, _ = _locate(ref, settings)
    return served, source


def _locate(
    ref: str | None, settings: Settings
) -> tuple[str | None, str | Path, dict[str, Any] | None]:
    """`locate_model` plus the registry model's profile (None outside the registry)."""
    from llmos.models.loader import DEFAULT_MODEL
    from llmos.storage.registry import Registry, ensure_default_model

    if ref is not None and Path(ref).expanduser().exists():
        return None, Path(ref).expanduser(), None
    name = ref or DEFAULT_MODEL
    registry = Registry(open_storage(settings))
    if name == DEFAULT_MODEL:
        ensure_default_model(registry)
    if registry.exists(name):
        return name, registry.resolve(name), profile_of(registry, name)
    return None, name, None  # a packaged model the loader knows (gemma3), or its clear error


def load_engine(
    ref: str | None = None,
    settings: Settings | None = None,
    *,
    pids: Iterator[int] | None = None,
    name: str | None = None,
    profile: dict[str, Any] | None = None,
    check_budget: bool = True,
    predictor: Predictor | None = None,
) -> Engine:
    """Load a model and build a kernel engine around it.

    `ref` is a registry name (`name[:tag]`), a path to a .gguf file or HF folder, or a packaged
    model (`smollm2`, the default, or `gemma3`). `pids` is the pid counter shared with the other
    engines of one server; `name` overrides the name the model is served as. The engine gets
    the registry model's profile (its sampling defaults), or `profile` when given. A model whose
    load can never fit the memory budget is refused before any weight is read, unless the caller
    checked already (`check_budget=False`: the residency manager, which also makes room).
    `predictor` is the output-length predictor of the server (default: the engine's own).
    """
    from llmos.kernel.engine import Engine, set_compute_threads
    from llmos.models.loader import load_model_files
    from llmos.models.registry import build_model

    settings = settings or Settings()
    set_compute_threads(settings.kernel.num_threads)
    served, source, stored_profile = _locate(ref, settings)
    if check_budget:
        check_memory_budget(name or served or str(source), source, settings)
    files = load_model_files(source)
    model = build_model(files.config, files.weights, settings.kernel.device, files.quantized)
    return Engine(
        model,
        files.tokenizer,
        model_name=name or served or files.name,
        chat_template=files.chat_template,
        kernel=settings.kernel,
        memory=settings.memory,
        pids=pids,
        profile=profile if profile is not None else stored_profile,
        predictor=predictor,
    )


def model_capacity(model: str, settings: Settings) -> tuple[str, int, int]:
    """(id, KV blocks in its pool, running slots) of a registry model under `settings`, from
    its stored config (no weight is read); NotFound for a model the registry does not hold."""
    from llmos.errors import NotFound
    from llmos.kernel.engine import num_pool_blocks
    from llmos.models.loader import DEFAULT_MODEL, config_from_hf, read_config
    from llmos.storage.names import ModelRef, display_id
    from llmos.storage.registry import Registry, ensure_default_model

    ref = ModelRef.parse(model)
    registry = Registry(open_storage(settings))
    if model == DEFAULT_MODEL:
        ensure_default_model(registry)
    if not registry.exists(ref):
        raise NotFound(f"model {model} not found", hint="see `llmos models list`")
    manifest = registry.show(model)
    if manifest.format == "gguf":
        config = read_config(registry.storage.blobs.path(manifest.main_file.digest))
    else:
        config = config_from_hf(manifest.config)
    return display_id(ref), num_pool_blocks(config, settings.memory), settings.kernel.max_num_seqs


def profile_of(registry: Registry, name: str) -> dict[str, Any]:
    """A registry model's profile as the engine holds it: the fields set ({} for none)."""
    profile = registry.show(name).profile
    return profile.model_dump(exclude_none=True) if profile is not None else {}


def load_bytes(source: str | Path, settings: Settings) -> int:
    """The most memory loading `source` (a file or folder; 0 for a packaged name the loader
    resolves) takes with these settings: the weights' load peak, the KV pool, the swap area."""
    from llmos.models.footprint import estimate_load_bytes

    if not isinstance(source, Path) and not Path(source).exists():
        return 0
    m = settings.memory
    return estimate_load_bytes(source, m.kv_cache_bytes, m.swap_bytes)


def check_memory_budget(model: str, source: str | Path, settings: Settings) -> None:
    """Refuse, before reading any weight, a model whose load can never fit the memory budget."""
    from llmos.errors import InsufficientMemory

    budget = settings.kernel.memory_budget()
    need = load_bytes(source, settings)
    if need > budget:
        raise InsufficientMemory(model, need, budget, 0, never=True)


def served_name(ref: str) -> str | None:
    """The id a registry reference is served as (`x:latest` -> `x`, as requests name it), so a
    request for the start model never loads a second copy; None for a path."""
    from llmos.storage.names import ModelRef, display_id

    if Path(ref).expanduser().exists():
        return None
    try:
        return display_id(ModelRef.parse(ref))
    except InvalidRequest:
        return None


class RegistrySource:
    """Models of the storage registry, loaded from their verified blobs (never from a path);
    the `ModelSource` the residency manager loads from."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._registry: Registry | None = None
        self._lock = threading.Lock()
        self.predictor: Predictor | None = None  # shared by every engine it loads

    @property
    def registry(self) -> Registry:
        """The registry of the data dir, opened on first use (a database open: may block)."""
        with self._lock:
            if self._registry is None:
                from llmos.storage.registry import Registry

                self._registry = Registry(open_storage(self.settings))
            return self._registry

    def find(self, name: str) -> str | None:
        from llmos.storage.names import ModelRef, display_id

        try:
            ref = ModelRef.parse(name)
        except InvalidRequest:
            return None
        return display_id(ref) if self.registry.exists(ref) else None

    def check(self, model_id: str) -> None:
        self.registry.resolve(model_id)  # hashes the blobs once: ModelCorrupted

    def load_bytes(self, model_id: str) -> int:
        return load_bytes(self.registry.resolve(model_id), self.settings)

    def load(self, model_id: str, pids: Iterator[int]) -> ServedEngine:
        # The verified blob (a `.gguf` link or an HF folder of links in the data dir), never a
        # path a request could name; `check` already hashed it (cached by inode and mtime).
        path = self.registry.resolve(model_id)
        profile = profile_of(self.registry, model_id)
        return load_engine(
            str(path),
            self.settings,
            pids=pids,
            name=model_id,
            profile=profile,
            check_budget=False,
            predictor=self.predictor,
        )


class DemandStoreOf:
    """The residency manager's demand history and pins in the data dir's database (opened on
    first use, through the registry's storage); the kernel's `DemandStore` and `PinStore`."""

    def __init__(self, source: RegistrySource) -> None:
        self.source = source

    @property
    def table(self) -> DemandTable:
        from llmos.storage.demand import DemandTable

        return DemandTable(self.source.registry.storage.db)

    def load_demand(self, since_s: float) -> list[tuple[str, float, int, int]]:
        return self.table.load_demand(since_s)

    def save_demand(self, rows: list[tuple[str, float, int, int]], *, keep_since_s: float) -> None:
        self.table.save_demand(rows, keep_since_s=keep_since_s)

    def load_pins(self) -> list[str]:
        return self.table.load_pins()

    def save_pin(self, model_id: str, is_pinned: bool) -> None:
        self.table.save_pin(model_id, is_pinned)


def start_residency(residency: Residency, settings: Settings) -> None:
    """Once the engine loop runs: read the demand history back, load the pinned models (on
    the loader thread), and start the planner that saves demand and preloads. A database that
    cannot be read leaves the server serving, without history or pins (logged)."""
    try:
        residency.demand.load()
        residency.restore_pins()
    except Exception:
        logger.exception("demand history and pins could not be read; starting without them")
    residency.start_planner(settings.kernel.preload_interval_s)


class AllotmentSync:
    """Keeps the kernel's fair-share weights and reservations equal to the database's: read
    when started, after each change through the admin API, and every `interval_s` (so a change
    the CLI writes to the same database reaches a running server without a restart)."""

    def __init__(
        self, loop: EngineLoop, settings: Settings, residency: Residency | None = None
    ) -> None:
        self.loop = loop
        self.residency = residency  # told which models hold reservations (kept resident longer)
        self.settings = settings
        self.interval_s = settings.kernel.allotments_refresh_s
        self._db: Database | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def refresh(self) -> Allotments:
        """Read the database and hand the engines what changed; returns what they now hold."""
        from llmos.security.reservations import Reservations
        from llmos.storage.db import Database

        with self._lock:
            if self._db is None:
                self._db = Database(self.settings.storage)
            allotments = Reservations(self._db).allotments()
            if self.residency is not None:
                self.residency.reserved = {m for m, held in allotments.reservations.items() if held}
            if allotments != self.loop.allotments:
                self.loop.set_allotments(allotments)
                logger.info(
                    "allotments: %d shares, reservations on %d models",
                    len(allotments.shares),
                    len(allotments.reservations),
                )
            return allotments

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="llmos-allotments", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        with self._lock:
            if self._db is not None:
                self._db.dispose()
                self._db = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
                self._failing = False
            except Exception as e:  # a database hiccup must not stop the server; retry later
                if not self._failing:
                    logger.warning("cannot read reservations and shares: %s", e)
                self._failing = True
            if self.interval_s <= 0 or self._stop.wait(self.interval_s):
                return


@dataclass
class ServingSystem:
    """What a server runs: the engine driver, the resident models and where they come from."""

    settings: Settings
    loop: EngineLoop
    residency: Residency
    source: RegistrySource
    metrics: Metrics
    default_model: str  # the id of the model the server started with
    events: EventLog  # what happened (loads, evictions, failures, refusals), persisted
    allotments: AllotmentSync  # shares and reservations from the database into the kernel
    predictor: Predictor | None = None  # output lengths learned from the history table


def build_serving(
    engine: ServedEngine,
    settings: Settings,
    *,
    aliases: Iterable[str] = (),
    pids: Iterator[int] | None = None,
) -> ServingSystem:
    """The driver and residency around `engine`, the model resident from the start (its id is
    the default model); any other registry model is loaded on demand. `pids` is the counter
    `engine` draws its pids from (engines loaded later share it, so a pid names one process)."""
    from llmos.kernel.demand import DemandHistory
    from llmos.kernel.loop import EngineLoop
    from llmos.kernel.residency import Residency
    from llmos.kernel.supervisor import Supervisor, SupervisorPolicy
    from llmos.monitor.eventlog import EventLog
    from llmos.monitor.events import PreemptionStorms
    from llmos.monitor.metrics import Metrics

    k = settings.kernel
    metrics = Metrics()
    monitor = settings.monitor
    # Opens the metadata DB on its writer thread, on the first event (never blocks here).
    events = EventLog(settings.storage, max_rows=monitor.max_events)
    loop = EngineLoop(
        max_running=settings.kernel.max_num_seqs,
        max_waiting=settings.api.max_queue,
        metrics=metrics,
        pids=pids,
        watchdog_timeout_s=k.watchdog_timeout_s,
        watchdog_exit_s=k.watchdog_exit_s,
    )
    source = RegistrySource(settings)
    loop.predictor = source.predictor = open_predictor(settings)
    if hasattr(engine, "predictor"):
        engine.predictor = loop.predictor
    supervisor = Supervisor(
        SupervisorPolicy(
            max_failures=k.engine_max_failures,
            failure_window_s=k.engine_failure_window_s,
            max_restarts=k.engine_max_restarts,
            crashloop_cooldown_s=k.engine_crashloop_cooldown_s,
        )
    )
    loop.preemption_storms = PreemptionStorms(
        events,
        threshold=monitor.preemption_storm_threshold,
        window_s=monitor.preemption_storm_window_s,
    )
    store = DemandStoreOf(source)
    demand = DemandHistory(
        window_s=k.demand_window_s,
        alpha=k.demand_alpha,
        history_days=k.demand_history_days,
        store=store,
    )
    residency = Residency(
        loop,
        source,
        max_resident=settings.kernel.max_resident_models,
        events=events,
        supervisor=supervisor,
        memory_budget_bytes=k.memory_budget(),
        demand=demand,
        pins=store,
        preload_min_requests=k.preload_min_requests,
        is_preloading=k.preload and k.preload_interval_s > 0,
    )
    names = {a for a in aliases if a} | {settings.api.model}
    # A start model read from a path (or a package outside the registry) cannot be reloaded by
    # name, so it is never unloaded.
    from_path = any(Path(n).expanduser().exists() for n in names)
    residency.adopt(engine, aliases=names, is_reloadable=False if from_path else None)
    return ServingSystem(
        settings,
        loop,
        residency,
        source,
        metrics,
        engine.model_name,
        events=events,
        allotments=AllotmentSync(loop, settings, residency),
        predictor=loop.predictor,
    )


def open_predictor(settings: Settings) -> Predictor:
    """The server's output-length predictor, wired to the data dir: every finished process is
    appended to the bounded history table, each fit is saved atomically, and a restart starts
    from the saved model and the stored history (read on a background thread, so the server
    starts at once; until then it predicts cold)."""
    from llmos.kernel.predict import HistoryRecord, LengthModel, Predictor
    from llmos.storage.history import HistoryStore, load_model, save_model

    k = settings.kernel
    history = HistoryStore(settings.storage, max_rows=k.predict_history_rows)
    predictor = Predictor(
        max_records=k.predict_history_rows,
        window=k.predict_window,
        retrain_every=k.predict_retrain_every,
        min_records=k.predict_min_records,
        on_record=lambda rec: history.append(rec.to_dict()),
        on_trained=lambda data: save_model(settings.storage, data),
        on_close=history.close,
    )

    try:  # what earlier runs stored; records of this run join the table as it serves
        stored_upto: int | None = history.last_seq()
    except Exception:
        logger.exception("could not read the history table; the predictor starts cold")
        stored_upto = None

    def restore() -> None:
        if stored_upto is None:
            return
        try:
            data = load_model(settings.storage)
            model = LengthModel.from_bytes(data) if data is not None else None
            records = [HistoryRecord.from_dict(r) for r in history.recent(upto_seq=stored_upto)]
        except Exception:
            logger.exception("could not read the stored history; the predictor starts cold")
            return
        predictor.seed(records, model)
        logger.info(
            "length predictor: %d stored records, saved model: %s", len(records), bool(model)
        )

    threading.Thread(target=restore, name="llmos-predictor-restore", daemon=True).start()
    return predictor
