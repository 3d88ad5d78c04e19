"""The event log against a real metadata DB (SQLite, and PostgreSQL when given): events written
by the writer thread, pruned to the newest N, read back with filters, flushed on close, never
blocking the caller even when the database is stuck, and stored atomically with a key change."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from llmos.monitor.eventlog import EventLog, EventRow, append_event, read_events
from llmos.monitor.events import EventKind, Severity
from llmos.storage.db import Database


@pytest.fixture
def log(db: Database) -> Iterator[EventLog]:
    events = EventLog(db, max_rows=1000)
    yield events
    events.close()


def _count(db: Database) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(EventRow)) or 0)


def test_recorded_events_are_read_back_oldest_first_with_their_fields(
    log: EventLog, db: Database
) -> None:
    before = datetime.now(UTC)
    log.record(
        EventKind.MODEL_LOADED, model="smollm2", message="smollm2 loaded in 1.2 s", load_s=1.2
    )
    log.record(
        EventKind.MODEL_EVICTED,
        model="gemma3-270m",
        message="gemma3-270m unloaded to make room for smollm2",
        reason="lru",
        for_model="smollm2",
    )
    log.record(EventKind.SERVER_STOPPING, severity=Severity.WARNING, message="stopping")
    assert log.flush()
    page = log.read()
    assert [e.kind for e in page.events] == ["model_loaded", "model_evicted", "server_stopping"]
    loaded, evicted, stopping = page.events
    assert loaded.severity == "info" and loaded.details == {"load_s": 1.2}
    assert evicted.model == "gemma3-270m"
    assert evicted.details == {"reason": "lru", "for_model": "smollm2"}
    assert stopping.model is None and stopping.severity == "warning"  # severity overrides
    assert loaded.seq < evicted.seq < stopping.seq and page.last_seq == stopping.seq
    assert before <= loaded.ts <= datetime.now(UTC)
    assert loaded.ts.tzinfo is not None
    assert loaded.to_json()["ts"] == loaded.ts.isoformat()


def test_default_severity_comes_from_the_kind(log: EventLog) -> None:
    log.record(EventKind.MODEL_LOAD_FAILED, model="x", message="corrupted")
    log.record(EventKind.PREEMPTION_STORM, model="x", message="storm")
    log.record(EventKind.KEY_CREATED, message="key")
    assert log.flush()
    assert [e.severity for e in log.read().events] == ["error", "warning", "info"]


def test_the_log_keeps_only_the_newest_max_rows(db: Database) -> None:
    log = EventLog(db, max_rows=5)
    try:
        for i in range(12):
            log.record(EventKind.MODEL_LOADED, model=f"m{i}", message=f"load {i}")
            if i % 4 == 3:
                assert log.flush()  # several batches: every one prunes
        assert log.flush()
        assert _count(db) == 5
        page = log.read(limit=100)
        assert [e.model for e in page.events] == [f"m{i}" for i in range(7, 12)]
    finally:
        log.close()


def test_filters_by_kind_model_since_and_limit(log: EventLog) -> None:
    for i in range(6):
        model = "a" if i % 2 == 0 else "b"
        log.record(EventKind.MODEL_LOADED, model=model, message=f"loaded {i}")
        log.record(EventKind.MODEL_EVICTED, model=model, message=f"evicted {i}", reason="lru")
    assert log.flush()
    everything = log.read(limit=1000).events
    assert len(everything) == 12

    evicted_b = log.read(kind="model_evicted", model="b").events
    assert [e.message for e in evicted_b] == ["evicted 1", "evicted 3", "evicted 5"]

    newest = log.read(limit=3)  # no cursor: the newest, oldest first
    assert [e.seq for e in newest.events] == [e.seq for e in everything[-3:]]

    cursor = everything[3].seq  # with a cursor: the oldest after it, to page forward
    page = log.read(since_seq=cursor, limit=4)
    assert [e.seq for e in page.events] == [e.seq for e in everything[4:8]]
    assert page.last_seq == everything[7].seq
    rest = log.read(since_seq=page.last_seq, limit=100)
    assert [e.seq for e in rest.events] == [e.seq for e in everything[8:]]

    caught_up = log.read(since_seq=everything[-1].seq)
    assert caught_up.events == [] and caught_up.last_seq == everything[-1].seq
    no_match = log.read(kind="rate_limited")  # nothing matches: resume after what exists
    assert no_match.events == [] and no_match.last_seq == everything[-1].seq

    assert log.read(since=datetime.now(UTC) + timedelta(hours=1)).events == []
    since_time = log.read(since=everything[0].ts - timedelta(seconds=1), limit=2)
    assert [e.seq for e in since_time.events] == [e.seq for e in everything[:2]]
    from_6 = [e.seq for e in everything if e.ts >= everything[6].ts]
    in_kolkata = everything[6].ts.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert [e.seq for e in log.read(since=in_kolkata).events] == from_6
    naive_utc = everything[6].ts.replace(tzinfo=None)
    assert [e.seq for e in log.read(since=naive_utc).events] == from_6


def test_close_writes_what_is_queued_and_it_survives_a_new_log(db: Database) -> None:
    log = EventLog(db)
    for i in range(50):
        log.record(EventKind.RATE_LIMITED, model="m", message=f"refused {i}")
    log.close()  # no flush: close must write the queue
    log.record(EventKind.SERVER_STARTED, message="after close: dropped")
    page = read_events(db, limit=1000)
    assert [e.message for e in page.events] == [f"refused {i}" for i in range(50)]

    reopened = EventLog(db)  # a restarted server on the same database
    try:
        reopened.record(EventKind.SERVER_STARTED, message="again")
        assert reopened.flush()
        events = reopened.read(limit=1000).events
        assert len(events) == 51 and events[-1].seq > page.last_seq
    finally:
        reopened.close()


class StuckDatabase(Database):
    """The real database, whose sessions wait until `release` is set (a stuck disk or lock)."""

    release: threading.Event
    entered: threading.Event

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        self.entered.set()
        assert self.release.wait(30)
        with super().session() as s:
            yield s


def test_record_never_blocks_a_full_queue_drops_and_counts(storage_config) -> None:
    db = StuckDatabase(storage_config)
    db.release, db.entered = threading.Event(), threading.Event()
    log = EventLog(db, max_queue=4)
    try:
        log.record(EventKind.MODEL_LOADED, message="taken by the writer, which is now stuck")
        assert db.entered.wait(30)
        for i in range(4):
            log.record(EventKind.MODEL_LOADED, message=f"queued {i}")
        log.record(EventKind.MODEL_LOADED, message="no room: dropped")  # returns at once
        assert log.num_dropped == 1
        assert not log.flush(timeout_s=0.05)  # still stuck: flush says so instead of hanging
        db.release.set()
        assert log.flush()
        messages = [e.message for e in log.read().events]
        assert messages[0].startswith("taken by the writer")
        assert messages[1:] == [f"queued {i}" for i in range(4)]
    finally:
        db.release.set()
        log.close()
        db.dispose()


def test_repeats_within_the_window_are_counted_into_the_next_event(log: EventLog) -> None:
    now_s = [1000.0]
    log._clock = lambda: now_s[0]
    for _ in range(4):
        log.record(EventKind.RATE_LIMITED, message="refused", throttle_key="key-1")
    log.record(EventKind.RATE_LIMITED, message="another key", throttle_key="key-2")
    log.record(EventKind.QUOTA_REFUSED, message="other kind, same key", throttle_key="key-1")
    now_s[0] += log.repeat_window_s
    log.record(EventKind.RATE_LIMITED, message="refused later", throttle_key="key-1")
    assert log.flush()
    events = log.read().events
    assert [e.message for e in events] == [
        "refused",
        "another key",
        "other kind, same key",
        "refused later",
    ]
    assert "num_suppressed" not in events[0].details
    assert events[-1].details["num_suppressed"] == 3


def test_odd_details_become_text_and_do_not_fail_the_batch(log: EventLog) -> None:
    log.record(EventKind.ENGINE_FAILED, model="m", message="tick failed", error=ValueError("x"))
    log.record(EventKind.ENGINE_RESTARTED, model="m", message="rebuilt", when=datetime(2026, 1, 1))
    assert log.flush()
    failed, restarted = log.read().events
    assert failed.details == {"error": "x"}
    assert restarted.details == {"when": "2026-01-01 00:00:00"}


def test_append_event_is_part_of_the_callers_transaction(db: Database) -> None:
    with db.session() as s:
        append_event(s, EventKind.KEY_CREATED, message="kept", key_id="k1")
    with pytest.raises(RuntimeError), db.session() as s:
        append_event(s, EventKind.KEY_CREATED, message="rolled back", key_id="k2")
        raise RuntimeError("the change failed")
    assert [e.message for e in read_events(db).events] == ["kept"]


def test_a_log_built_from_settings_opens_its_database_lazily(storage_config) -> None:
    log = EventLog(storage_config)
    try:
        log.record(EventKind.SERVER_STARTED, message="first")
        assert log.flush()
        assert [e.message for e in log.read().events] == ["first"]
    finally:
        log.close()
