"""The residency manager's persistent state: per-model demand windows and admin pins (migration
`0007_demand`). `DemandTable` is the kernel's `DemandStore` and `PinStore` (wired by
`llmos.system`; the kernel never imports storage). Each call is one transaction.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, String, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from llmos.storage.db import Database
from llmos.storage.schema import Base, utcnow

MAX_MODEL_CHARS = 130


class DemandRow(Base):
    """Requests and tokens of one model in one window (windows start at multiples of the
    window length, in epoch seconds); windows nobody used are not stored."""

    __tablename__ = "model_demand"

    model: Mapped[str] = mapped_column(String(MAX_MODEL_CHARS), primary_key=True)
    window_start_s: Mapped[int] = mapped_column(BigInteger, primary_key=True, index=True)
    num_requests: Mapped[int] = mapped_column(BigInteger)
    num_tokens: Mapped[int] = mapped_column(BigInteger)


class PinRow(Base):
    """A model pinned resident by an admin (`llmos models pin`)."""

    __tablename__ = "model_pins"

    model: Mapped[str] = mapped_column(String(MAX_MODEL_CHARS), primary_key=True)
    pinned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DemandTable:
    """Demand windows and pins in the metadata database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def load_demand(self, since_s: float) -> list[tuple[str, float, int, int]]:
        q = select(DemandRow).where(DemandRow.window_start_s >= int(since_s))
        with self.db.session() as s:
            return [
                (r.model, float(r.window_start_s), r.num_requests, r.num_tokens)
                for r in s.scalars(q.order_by(DemandRow.window_start_s))
            ]

    def save_demand(self, rows: list[tuple[str, float, int, int]], *, keep_since_s: float) -> None:
        with self.db.session() as s:
            for model, start_s, num_requests, num_tokens in rows:
                # merge: insert, or replace the counts of a window saved by an earlier flush
                s.merge(
                    DemandRow(
                        model=model[:MAX_MODEL_CHARS],
                        window_start_s=int(start_s),
                        num_requests=num_requests,
                        num_tokens=num_tokens,
                    )
                )
            s.execute(delete(DemandRow).where(DemandRow.window_start_s < int(keep_since_s)))

    def load_pins(self) -> list[str]:
        with self.db.session() as s:
            return list(s.scalars(select(PinRow.model).order_by(PinRow.model)))

    def save_pin(self, model_id: str, is_pinned: bool) -> None:
        with self.db.session() as s:
            if is_pinned:
                s.merge(PinRow(model=model_id[:MAX_MODEL_CHARS], pinned_at=utcnow()))
            else:
                s.execute(delete(PinRow).where(PinRow.model == model_id))
