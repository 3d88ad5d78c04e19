"""The history of finished processes (table `history`, migration `0005_history`) and the saved
length model, for the scheduler's output-length predictor (`llmos.kernel.predict`).

`HistoryStore.append` never blocks its caller (the tick): records go on a bounded queue that
one writer thread drains, one batch per transaction, pruning the table to its newest `max_rows`
rows in the same transaction. A full queue drops the record (counted): the history is a sample
to learn from, not a ledger. Records are plain JSON here; storage knows nothing of the kernel.
The model file is written atomically (temp file, fsync, rename, fsync of the folder).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer, String, delete, func, select
from sqlalchemy.orm import Mapped, mapped_column

from llmos.config import StorageConfig
from llmos.storage.db import Database
from llmos.storage.layout import TEMP_PREFIX, DataDir, fsync_dir
from llmos.storage.schema import Base

logger = logging.getLogger(__name__)

BATCH_SIZE = 256
MODEL_FILENAME = "length-model.npz"


class HistoryRow(Base):
    """One finished process; `record` holds its features and outcome as the kernel gave them."""

    __tablename__ = "history"
    __table_args__ = {"sqlite_autoincrement": True}

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    model: Mapped[str] = mapped_column(String(130))
    owner: Mapped[str] = mapped_column(String(130))
    num_output_tokens: Mapped[int] = mapped_column(Integer)
    finish_reason: Mapped[str] = mapped_column(String(16))
    record: Mapped[dict[str, Any]] = mapped_column(JSON)


_STOP = object()


class HistoryStore:
    """The history table of one data dir: `append` from any thread, `recent` to read back."""

    def __init__(
        self, db: Database | StorageConfig, *, max_rows: int = 10_000, max_queue: int = 4096
    ) -> None:
        self.max_rows = max_rows
        self.num_dropped = 0
        self._db = db if isinstance(db, Database) else None
        self._config = db if isinstance(db, StorageConfig) else None
        self._db_lock = threading.Lock()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        self._writer: threading.Thread | None = None

    @property
    def db(self) -> Database:
        with self._db_lock:
            if self._db is None:
                assert self._config is not None
                self._db = Database(self._config)
            return self._db

    def append(self, record: dict[str, Any]) -> None:
        """Queue one record (`HistoryRecord.to_dict()`); never blocks."""
        features = record.get("features", {})
        row = HistoryRow(
            ts=datetime.now(UTC),
            model=str(features.get("model", ""))[:130],
            owner=str(features.get("owner", ""))[:130],
            num_output_tokens=int(record.get("num_output_tokens", 0)),
            finish_reason=str(record.get("finish_reason", ""))[:16],
            record=record,
        )
        with self._db_lock:
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_loop, name="llmos-history", daemon=True
                )
                self._writer.start()
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            self.num_dropped += 1
            if self.num_dropped == 1:
                logger.warning("history queue full: dropping finished-process records")

    def last_seq(self) -> int:
        """The seq of the newest stored record (0: none), e.g. to read only what an earlier run
        stored while this one appends."""
        with self.db.session() as s:
            return int(s.scalar(select(func.max(HistoryRow.seq))) or 0)

    def recent(
        self, limit: int | None = None, *, upto_seq: int | None = None
    ) -> list[dict[str, Any]]:
        """The newest `limit` records (default `max_rows`) with seq <= `upto_seq` (default: all),
        oldest first (blocking)."""
        q = select(HistoryRow.record).order_by(HistoryRow.seq.desc()).limit(limit or self.max_rows)
        if upto_seq is not None:
            q = q.where(HistoryRow.seq <= upto_seq)
        with self.db.session() as s:
            rows = list(s.scalars(q))
        rows.reverse()
        return rows

    def flush(self, timeout_s: float = 10.0) -> None:
        """Write what is queued and stop the writer (a later `append` starts a new one)."""
        with self._db_lock:
            writer, self._writer = self._writer, None
        if writer is None:
            return
        self._queue.put(_STOP, timeout=timeout_s)
        writer.join(timeout_s)

    close = flush

    def _write_loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < BATCH_SIZE and batch[-1] is not _STOP:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            rows = [item for item in batch if isinstance(item, HistoryRow)]
            if rows:
                self._write(rows)
            if batch[-1] is _STOP:
                return

    def _write(self, rows: list[HistoryRow]) -> None:
        try:
            with self.db.session() as s:
                s.add_all(rows)
                s.flush()
                oldest_kept = (
                    select(HistoryRow.seq)
                    .order_by(HistoryRow.seq.desc())
                    .offset(self.max_rows - 1)
                    .limit(1)
                ).scalar_subquery()
                s.execute(delete(HistoryRow).where(HistoryRow.seq < oldest_kept))
        except Exception:
            self.num_dropped += len(rows)
            logger.exception("could not write %d history records; dropping them", len(rows))


def model_path(config: StorageConfig) -> Path:
    return DataDir(config.data_dir).root / "predictor" / MODEL_FILENAME


def save_model(config: StorageConfig, data: bytes) -> None:
    """Replace the saved length model atomically: a crash leaves the old file or the new one."""
    path = model_path(config)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def load_model(config: StorageConfig) -> bytes | None:
    """The saved length model's bytes, or None if there is none."""
    try:
        return model_path(config).read_bytes()
    except FileNotFoundError:
        return None
