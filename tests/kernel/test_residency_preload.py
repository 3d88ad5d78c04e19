"""Pins, eviction by predicted demand and preloading in the program loader: tiny random llamas
with SmolLM2's tokenizer, real engines, a real driver thread, a real event log and the real
pin/demand tables on SQLite. Clocks are injected (demand windows, recency): nothing sleeps.

Covers: a pinned model is never unloaded (by count or by the memory budget), pins that cannot
all fit are refused with the numbers, pins and demand survive a restart, the idle model with the
lowest predicted demand is evicted first, a model predicted to be needed is preloaded into free
room or in place of an idle model predicted to be needed less, and a busy model is never evicted
for a preload. Every unload cites its reason in the event log.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llmos.errors import Conflict, Overloaded
from llmos.kernel.demand import DemandHistory
from llmos.kernel.loop import EngineLoop
from llmos.kernel.residency import Residency
from llmos.monitor.eventlog import EventLog
from llmos.monitor.events import Event
from llmos.storage.db import Database
from llmos.storage.demand import DemandTable
from tests.kernel.test_residency import Sink, TinySource, _submit
from tests.serving import wait_until

W = 60.0  # demand window
DAY = 24 * W  # a compressed day
MIB = 1 << 20


class Clock:
    def __init__(self, t_s: float = 0.0) -> None:
        self.t_s = t_s

    def __call__(self) -> float:
        return self.t_s


class SizedSource(TinySource):
    """TinySource whose loads are estimated at `load_mib` each (for memory-budget tests)."""

    def __init__(self, tokenizer, names: tuple[str, ...] = ("a", "b", "c"), load_mib: int = 0):  # type: ignore[no-untyped-def]
        super().__init__(tokenizer, names)
        self.load_mib = load_mib

    def load_bytes(self, model_id: str) -> int:
        return self.load_mib * MIB


@pytest.fixture
def tokenizer(smollm2_files):  # type: ignore[no-untyped-def]
    return smollm2_files.tokenizer


@pytest.fixture
def loop() -> Iterator[EngineLoop]:
    loop = EngineLoop(max_running=8, max_waiting=8)
    loop.start()
    yield loop
    loop.stop()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'llmos.db'}")
    yield db
    db.dispose()


@pytest.fixture
def events(db: Database) -> Iterator[EventLog]:
    log = EventLog(db)
    yield log
    log.close()


def build(
    loop: EngineLoop,
    source: TinySource,
    db: Database,
    events: EventLog,
    *,
    wall: Clock,
    mono: Clock,
    max_resident: int = 2,
    budget: int = 0,
) -> Residency:
    table = DemandTable(db)
    demand = DemandHistory(window_s=W, day_s=DAY, clock=wall, store=table)
    return Residency(
        loop,
        source,
        max_resident=max_resident,
        events=events,
        memory_budget_bytes=budget,
        demand=demand,
        pins=table,
        clock=mono,
    )


def shut(residency: Residency, loop: EngineLoop) -> None:
    """Close `residency` as a stopping server would: its engines leave the loop."""
    residency.close()
    for name in residency.resident_ids:
        assert loop.remove_engine(name) is not None


def evictions(events: EventLog) -> list[Event]:
    assert events.flush()
    return events.read(kind="model_evicted", limit=100).events


def test_a_pinned_model_is_never_unloaded_to_make_room(  # type: ignore[no-untyped-def]
    loop: EngineLoop, tokenizer, db: Database, events: EventLog
) -> None:
    mono = Clock(100.0)
    residency = build(loop, TinySource(tokenizer), db, events, wall=Clock(), mono=mono)
    try:
        residency.pin_model("a").result(60)
        assert residency.pin_model("a").result(60) is not None  # pinning again is a no-op
        assert residency.pinned == ["a"] and residency.num_loads_on_demand == 0
        for name in ("b", "c", "b", "c"):  # a is the least recently used each time
            mono.t_s += 10
            residency.load(name)
            assert residency.is_resident("a")
        assert sorted(residency.resident_ids) == ["a", "c"]
        with pytest.raises(Conflict, match="pinned"):
            residency.unload("a")
        sink = Sink()
        pid = _submit(loop, residency.pin("c"), sink, max_tokens=4000)  # type: ignore[arg-type]
        residency.release("c")
        with pytest.raises(Overloaded) as busy:  # a pinned, c busy: no room for b
            residency.load("b")
        assert "pinned: a" in busy.value.message
        loop.kill(pid)
        sink.wait([pid])
        assert residency.unpin_model("a") and not residency.unpin_model("a")
        mono.t_s += 10
        residency.load("b")  # now a, idle and unpinned, is the one to go
        assert sorted(residency.resident_ids) == ["b", "c"]
        assert all(e.model != "a" for e in evictions(events)[:-1])
    finally:
        residency.close()


def test_a_pinned_model_is_never_unloaded_to_fit_the_memory_budget(  # type: ignore[no-untyped-def]
    loop: EngineLoop, tokenizer, db: Database, events: EventLog
) -> None:
    source = SizedSource(tokenizer, load_mib=1)
    first = build(loop, source, db, events, wall=Clock(), mono=Clock(), max_resident=8)
    one = first.load("a").memory_bytes()
    shut(first, loop)
    # Room for one resident tiny model beside a load (1 MiB estimated), not for two.
    budget = one + MIB + one // 2
    residency = build(
        loop, source, db, events, wall=Clock(), mono=Clock(), max_resident=8, budget=budget
    )
    try:
        residency.pin_model("a").result(60)
        residency.load("b")
        residency.load("c")  # over budget: b goes, not the pinned a
        assert sorted(residency.resident_ids) == ["a", "c"]
        gone = evictions(events)[-1]
        assert gone.model == "b" and gone.details["reason"] == "memory"
    finally:
        residency.close()


def test_pins_that_cannot_all_fit_are_refused_with_the_numbers(  # type: ignore[no-untyped-def]
    loop: EngineLoop, tokenizer, db: Database, events: EventLog
) -> None:
    source = SizedSource(tokenizer, load_mib=300)
    residency = build(
        loop, source, db, events, wall=Clock(), mono=Clock(), max_resident=2, budget=500 * MIB
    )
    try:
        source.gate.clear()  # hold a's load: neither is resident, both count their estimate
        loading = residency.pin_model("a")  # one alone fits (300 of 500 MiB) ...
        with pytest.raises(Conflict) as refused:
            residency.pin_model("b")  # ... two do not
        source.gate.set()
        assert loading.result(60) is not None
        message = refused.value.message
        assert "Cannot pin b" in message and "about 600 MiB" in message
        assert "(a 300 MiB, b 300 MiB;" in message and "memory budget of 500 MiB" in message
        assert residency.pinned == ["a"] and DemandTable(db).load_pins() == ["a"]
    finally:
        shut(residency, loop)
    roomy = build(loop, TinySource(tokenizer), db, events, wall=Clock(), mono=Clock())
    try:
        assert roomy.restore_pins() == ["a"]
        roomy.pin_model("b")
        with pytest.raises(Conflict, match=r"3 pinned models \(a, b, c\) would exceed "):
            roomy.pin_model("c")  # a is still pinned in the table: a, b, c > max_resident 2
    finally:
        roomy.close()


def test_pins_and_demand_survive_a_restart(  # type: ignore[no-untyped-def]
    loop: EngineLoop, tokenizer, db: Database, events: EventLog
) -> None:
    wall = Clock(5 * W)
    first = build(loop, TinySource(tokenizer), db, events, wall=wall, mono=Clock())
    first.pin_model("b").result(60)
    for _ in range(6):
        first.note_request("c")
    shut(first, loop)  # saves the demand history
    again = build(loop, TinySource(tokenizer), db, events, wall=wall, mono=Clock())
    try:
        again.demand.load()
        assert again.restore_pins() == ["b"]
        assert again.request("b").result(60) is not None
        assert again.is_resident("b") and again.pinned == ["b"]
        assert again.demand.window("c") == (6, 0)
        (info,) = [i for i in again.report() if i.model == "b"]
        assert info.is_pinned and "pinned" in info.reasons and info.num_bytes > 0
    finally:
        again.close()


def test_the_idle_model_predicted_to_be_needed_least_is_evicted_first(  # type: ignore[no-untyped-def]
    loop: EngineLoop, tokenizer, db: Database, events: EventLog
) -> None:
    wall, mono = Clock(0.0), Clock(100.0)
    residency = build(loop, TinySource(tokenizer), db, events, wall=wall, mono=mono)
    try:
        residency.load("a")
        mono.t_s += 10
        residency.load("b")  # b is the most recently used...
        for _ in range(30):  # ...but a is in demand
            residency.note_request("a")
        wall.t_s += W / 2
        assert residency.demand.forecast("a").requests > residency.demand.forecast("b").requests
        mono.t_s += 10
        residency.load("c")
        assert sorted(residency.resident_ids) == ["a", "c"]  # LRU alone would have unloaded a
        gone = evictions(events)[-1]
        assert gone.model == "b" and gone.details["reason"] == "demand"
        assert gone.details["for_model"] == "c" and "lowest predicted demand" in gone.message
    finally:
        residency.close()


def _yesterday(residency: Residency, model: str, wall: Clock, num_requests: int = 20) -> None:
    """`model` had `num_requests` in the next window's time-of-day slot yesterday."""
    residency.demand.record(model, num_requests=num_requests, now_s=wall.t_s + W - DAY)


def test_a_model_predicted_to_be_needed_is_preloaded_into_free_room(  # type: ignore[no-untyped-def]
    loop: EngineLoop, tokenizer, db: Database, events: EventLog
) -> None:
    wall = Clock(0.0)
    residency = build(loop, TinySource(tokenizer), db, events, wall=wall, mono=Clock(100.0))
    try:
        residency.load("a")
        assert residency.plan() is None  # no history: nothing to preload
        wall.t_s = DAY + 10 * W + 5
        _yesterday(residency, "b", wall)
        future = residency.plan()
        assert future is not None and future.result(60) is not None
        assert sorted(residency.resident_ids) == ["a", "b"] and residency.num_preloads == 1
        assert evictions(events) == []  # there was room: nothing unloaded
        loaded = events.read(kind="model_loaded", model="b").events[-1]
        assert loaded.details["preloaded"] and "predicted 20.0 requests" in loaded.message
        (info,) = [i for i in residency.report() if i.model == "b"]
        assert info.reasons[:2] == ["preloaded", "predicted_demand"]
        assert "predicted demand 20.0 requests in the next 60 s" in info.why
        assert residency.plan() is None  # already resident
        assert residency.pin("b") is not None  # its first request finds it warm
        residency.release("b")
        assert residency.num_loads_on_demand == 1  # only a's
    finally:
        residency.close()


def test_a_preload_replaces_an_idle_model_but_never_a_busy_one(  # type: ignore[no-untyped-def]
    loop: EngineLoop, tokenizer, db: Database, events: EventLog
) -> None:
    wall, mono = Clock(DAY + 10 * W + 5), Clock(100.0)
    residency = build(loop, TinySource(tokenizer), db, events, wall=wall, mono=mono, max_resident=1)
    try:
        a = residency.load("a")
        _yesterday(residency, "b", wall)
        mono.t_s += W  # a has not been used for a window: only its process keeps it
        sink = Sink()
        pid = _submit(loop, a, sink, max_tokens=4000)  # a is busy
        assert residency.plan() is None and residency.resident_ids == ["a"]
        loop.kill(pid)
        sink.wait([pid])
        assert residency.pin("a") is a  # a request uses it again
        residency.release("a")
        assert residency.plan() is None  # idle now, but used moments ago
        mono.t_s += W  # idle a while; its forecast is 0 against b's 20
        future = residency.plan()
        assert future is not None and future.result(60) is not None
        assert residency.resident_ids == ["b"]
        gone = evictions(events)[-1]
        assert gone.model == "a" and gone.details["reason"] == "preload"
        assert gone.details["for_model"] == "b" and "preloaded" in gone.message
    finally:
        residency.close()


def test_a_pinned_model_that_cannot_be_loaded_at_start_is_explained(  # type: ignore[no-untyped-def]
    loop: EngineLoop, tokenizer, db: Database, events: EventLog
) -> None:
    table = DemandTable(db)
    table.save_pin("gone", True)  # removed from the registry while the server was down
    table.save_pin("b", True)
    source = SizedSource(tokenizer, load_mib=64)
    residency = build(
        loop, source, db, events, wall=Clock(), mono=Clock(), max_resident=2, budget=64 * MIB
    )
    try:
        a = residency.load("a")  # resident and busy: b's load cannot make room
        sink = Sink()
        pid = _submit(loop, a, sink, max_tokens=4000)
        assert residency.restore_pins() == ["b", "gone"]
        assert wait_until(
            lambda: {i.model: i.note for i in residency.report()}.get("b") is not None
        )
        info = {i.model: i for i in residency.report()}
        assert (
            info["gone"].state == "not_loaded"
            and info["gone"].note == "not in the registry any more"
        )
        assert info["b"].state == "not_loaded" and info["b"].is_pinned
        assert "needs about 64 MiB" in str(info["b"].note) and "busy" in str(info["b"].note)
        assert events.flush()
        failed = events.read(kind="model_load_failed", limit=10).events
        assert {e.model for e in failed} == {"b", "gone"}
        assert all(e.message.startswith("pinned model") for e in failed)
        loop.kill(pid)
        sink.wait([pid])
    finally:
        residency.close()
