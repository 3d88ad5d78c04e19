"""The event log: events persisted in the metadata DB, bounded, readable with filters.

`EventLog.record` never blocks its caller (a tick, a request): the event goes on a bounded queue
that one writer thread drains into the `events` table, one batch per transaction, pruning the
table to its newest `max_rows` rows in the same transaction. A full queue drops the event
(counted, logged once) rather than stall the caller. `seq` grows in commit order (SQLite's writer
lock; a PostgreSQL advisory lock around each insert), so a reader polling `since=<last seq>`
never skips an event that commits later with a smaller seq.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer, String, Text, delete, func, select, text
from sqlalchemy.orm import Mapped, Session, mapped_column

from llmos.config import StorageConfig
from llmos.monitor.events import Event, EventKind, EventPage, Severity
from llmos.storage.db import Database
from llmos.storage.schema import Base, as_utc

logger = logging.getLogger(__name__)

_PG_EVENTS_LOCK_ID = 0x11_05_E7_E7
BATCH_SIZE = 256  # events written per transaction at most
MAX_MODEL_CHARS = 130
MAX_MESSAGE_CHARS = 2000


class EventRow(Base):
    """One event (migration `0003_events`); the newest `monitor.max_events` rows are kept."""

    __tablename__ = "events"
    __table_args__ = {"sqlite_autoincrement": True}  # a seq is never handed out twice

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(8))
    model: Mapped[str | None] = mapped_column(String(MAX_MODEL_CHARS))
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSON)


def _row(
    kind: EventKind,
    model: str | None,
    severity: Severity | None,
    message: str,
    details: dict[str, Any],
) -> EventRow:
    return EventRow(
        ts=datetime.now(UTC),
        kind=kind.value,
        severity=(severity or kind.default_severity).value,
        model=model[:MAX_MODEL_CHARS] if model is not None else None,
        message=message[:MAX_MESSAGE_CHARS],
        # Anything a caller passes becomes JSON here, so one odd value cannot fail a batch.
        details=json.loads(json.dumps(details, default=str)),
    )


def _serialize_inserts(session: Session) -> None:
    """Make seq order equal commit order on PostgreSQL (SQLite's write lock already does)."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_EVENTS_LOCK_ID})


def append_event(
    session: Session,
    kind: EventKind,
    *,
    model: str | None = None,
    severity: Severity | None = None,
    message: str,
    **details: Any,
) -> None:
    """Add an event inside the caller's transaction, so it is stored iff the change it reports
    is (e.g. a key created by the CLI, with no server running). Pruning is left to the next
    `EventLog` write."""
    _serialize_inserts(session)
    session.add(_row(kind, model, severity, message, details))


def read_events(
    db: Database,
    *,
    since_seq: int | None = None,
    since: datetime | None = None,
    kind: str | None = None,
    model: str | None = None,
    limit: int = 100,
) -> EventPage:
    """Events matching the filters, oldest first. With a `since` cursor (seq or time) the
    oldest `limit` after it (page forward by passing `last_seq` back); without one, the newest
    `limit`."""
    q = select(EventRow)
    if since_seq is not None:
        q = q.where(EventRow.seq > since_seq)
    if since is not None:
        # Compared as UTC: SQLite keeps the times as text without their offset.
        since = since.astimezone(UTC) if since.tzinfo else since.replace(tzinfo=UTC)
        q = q.where(EventRow.ts >= since)
    if kind is not None:
        q = q.where(EventRow.kind == kind)
    if model is not None:
        q = q.where(EventRow.model == model)
    is_forward = since_seq is not None or since is not None
    order = EventRow.seq.asc() if is_forward else EventRow.seq.desc()
    with db.session() as s:
        rows = list(s.scalars(q.order_by(order).limit(limit)))
        newest = s.scalar(select(func.max(EventRow.seq))) or 0
    if not is_forward:
        rows.reverse()
    events = [
        Event(r.seq, as_utc(r.ts), r.kind, r.severity, r.model, r.message, r.details or {})
        for r in rows
    ]
    if events:
        last_seq = events[-1].seq
    else:  # nothing matched: what exists now is seen, resume after it
        last_seq = max(since_seq or 0, newest)
    return EventPage(events, last_seq)


@dataclass(slots=True)
class _Repeats:
    first_s: float
    num_suppressed: int = 0


_STOP = object()


class EventLog:
    """The event log of one data dir: `record` from any thread, `read` from any thread.

    `db` is a Database, or the storage config to open one from on first use (so building the
    log opens nothing). Call `close` to write what is queued and stop the writer thread.
    """

    def __init__(
        self,
        db: Database | StorageConfig,
        *,
        max_rows: int = 10_000,
        max_queue: int = 1024,
        repeat_window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_rows = max_rows
        self.repeat_window_s = repeat_window_s
        self.num_dropped = 0
        self._db = db if isinstance(db, Database) else None
        self._config = db if isinstance(db, StorageConfig) else None
        self._clock = clock
        self._db_lock = threading.Lock()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        # Put and count under one lock, so `flush` waits for exactly what was queued before it.
        self._counts = threading.Condition()
        self._num_queued = 0
        self._num_done = 0
        self._repeats: dict[tuple[EventKind, str], _Repeats] = {}
        self._is_closed = False
        self._is_failing = False
        self._writer = threading.Thread(target=self._write_loop, name="llmos-events", daemon=True)
        self._writer.start()

    @property
    def db(self) -> Database:
        with self._db_lock:
            if self._db is None:
                assert self._config is not None
                self._db = Database(self._config)
            return self._db

    # ---- writing (any thread, never blocks) -----------------------------------------------

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
        if throttle_key is not None:
            num_suppressed = self._repeat(kind, throttle_key)
            if num_suppressed is None:
                return
            if num_suppressed:
                details["num_suppressed"] = num_suppressed
        try:
            row = _row(kind, model, severity, message, details)
        except (TypeError, ValueError):  # e.g. a circular value: report the bug, keep serving
            logger.exception("event %s has details that are not JSON", kind)
            return
        with self._counts:
            if self._is_closed:
                return
            try:
                self._queue.put_nowait(row)
            except queue.Full:
                self.num_dropped += 1
                if self.num_dropped == 1:
                    logger.warning("event queue full: dropping events (first: %s)", kind)
                return
            self._num_queued += 1
        logger.debug("event %s %s: %s", kind, model or "-", message)

    def _repeat(self, kind: EventKind, key: str) -> int | None:
        """None to drop a repeat inside the window, else how many were dropped before this."""
        now_s = self._clock()
        with self._counts:
            seen = self._repeats.get((kind, key))
            if seen is not None and now_s - seen.first_s < self.repeat_window_s:
                seen.num_suppressed += 1
                return None
            if len(self._repeats) >= 4096:  # keys of long-gone clients
                self._repeats = {
                    k: r
                    for k, r in self._repeats.items()
                    if now_s - r.first_s < self.repeat_window_s
                }
            self._repeats[(kind, key)] = _Repeats(now_s)
            return seen.num_suppressed if seen is not None else 0

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every event recorded before this call is written (or dropped on a
        database error); False if that took longer than `timeout_s`."""
        with self._counts:
            target = self._num_queued
            return self._counts.wait_for(lambda: self._num_done >= target, timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then stop the writer; later events are dropped."""
        with self._counts:
            if self._is_closed:
                return
            self._is_closed = True
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            logger.warning("event writer is stuck; %d events not written", self._queue.qsize())
            return
        self._writer.join(timeout_s)

    # ---- reading ----------------------------------------------------------------------------

    def read(
        self,
        *,
        since_seq: int | None = None,
        since: datetime | None = None,
        kind: str | None = None,
        model: str | None = None,
        limit: int = 100,
    ) -> EventPage:
        """`read_events` on this log's database (blocking: call from a worker thread)."""
        return read_events(
            self.db, since_seq=since_seq, since=since, kind=kind, model=model, limit=limit
        )

    # ---- the writer thread ------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < BATCH_SIZE and batch[-1] is not _STOP:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            rows = [item for item in batch if isinstance(item, EventRow)]
            if rows:
                self._write(rows)
            with self._counts:
                self._num_done += len(rows)
                self._counts.notify_all()
            if batch[-1] is _STOP:
                return

    def _write(self, rows: list[EventRow]) -> None:
        try:
            with self.db.session() as s:
                _serialize_inserts(s)
                s.add_all(rows)
                s.flush()
                prune(s, self.max_rows)
        except Exception:
            self.num_dropped += len(rows)
            if not self._is_failing:  # logged once per run of failures
                logger.exception("could not write %d events; dropping them", len(rows))
            self._is_failing = True
        else:
            self._is_failing = False


def prune(session: Session, max_rows: int) -> None:
    """Delete all but the newest `max_rows` events."""
    oldest_kept = (
        select(EventRow.seq).order_by(EventRow.seq.desc()).offset(max_rows - 1).limit(1)
    ).scalar_subquery()
    session.execute(delete(EventRow).where(EventRow.seq < oldest_kept))
