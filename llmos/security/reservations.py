"""Reservations and fair-share weights as stored: what `llmos users reserve|set-share` write and
the server hands the kernel (`llmos.kernel.reservation.Allotments`).

A reservation is refused when made if the model's reservations could not all be honoured at
once (their blocks exceed the pool, their slots `kernel.max_num_seqs`); the check and the write
happen in one transaction, so two concurrent reservations cannot both slip under the limit on
one database.
"""

from __future__ import annotations

import builtins
import math
from dataclasses import dataclass

from sqlalchemy import select

from llmos.errors import InvalidRequest, NotFound
from llmos.kernel.reservation import Allotments, Reservation, check_feasible
from llmos.security.principals import find_user as _find
from llmos.security.tables import ReservationRow, UserRow
from llmos.storage.db import Database


@dataclass(frozen=True, slots=True)
class ReservationInfo:
    """One stored reservation, as `llmos users reservations` lists it."""

    user: str
    model: str
    blocks: int | None  # absolute, or None when given as a fraction
    fraction: float | None  # of the model's pool
    slots: int


def check_amount(blocks: int | None, fraction: float | None, slots: int) -> None:
    """One-line errors for a reservation's numbers (before any model is looked at)."""
    if (blocks is None) == (fraction is None):
        raise InvalidRequest("Give exactly one of blocks or fraction.", param="blocks")
    if blocks is not None and blocks < 1:
        raise InvalidRequest(f"blocks must be >= 1; got {blocks}.", param="blocks")
    if fraction is not None and not (math.isfinite(fraction) and 0 < fraction <= 1):
        raise InvalidRequest(
            f"fraction must be in (0, 1] (a share of the model's KV pool); got {fraction}.",
            param="fraction",
        )
    if slots < 1:
        raise InvalidRequest(f"slots must be >= 1; got {slots}.", param="slots")


class Reservations:
    """Make, remove and list reservations; read them with the shares for the kernel."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def set(
        self,
        user: str,
        model: str,
        *,
        blocks: int | None = None,
        fraction: float | None = None,
        slots: int = 1,
        num_blocks: int,
        max_num_seqs: int,
    ) -> ReservationInfo:
        """Reserve for `user` on `model` (its id), whose pool has `num_blocks` KV blocks and
        `max_num_seqs` slots; replaces the user's reservation there. Conflict (with the
        numbers) when the model's reservations would no longer fit."""
        check_amount(blocks, fraction, slots)
        new = Reservation(blocks=blocks or 0, slots=slots, fraction=fraction)
        with self.db.session() as s:
            row = _find(s, user)
            others = s.execute(
                select(UserRow.name, ReservationRow)
                .join(UserRow, UserRow.id == ReservationRow.user_id)
                .where(ReservationRow.model == model, ReservationRow.user_id != row.id)
            ).all()
            trial = {name: _reservation(r) for name, r in others} | {row.name: new}
            check_feasible(model, trial, num_blocks, max_num_seqs)
            stored = s.get(ReservationRow, {"user_id": row.id, "model": model})
            if stored is None:
                stored = ReservationRow(user_id=row.id, model=model)
                s.add(stored)
            stored.blocks, stored.fraction, stored.slots = blocks, fraction, slots
            return ReservationInfo(row.name, model, blocks, fraction, slots)

    def remove(self, user: str, model: str) -> ReservationInfo:
        with self.db.session() as s:
            row = _find(s, user)
            stored = s.get(ReservationRow, {"user_id": row.id, "model": model})
            if stored is None:
                raise NotFound(
                    f"{row.name} has no reservation on {model}.",
                    hint="see `llmos users reservations`",
                )
            info = _info(row.name, stored)
            s.delete(stored)
            return info

    def list(self, *, user: str | None = None) -> builtins.list[ReservationInfo]:
        with self.db.session() as s:
            query = select(UserRow.name, ReservationRow).join(
                UserRow, UserRow.id == ReservationRow.user_id
            )
            if user is not None:
                query = query.where(ReservationRow.user_id == _find(s, user).id)
            rows = s.execute(query.order_by(ReservationRow.model, UserRow.name)).all()
            return [_info(name, r) for name, r in rows]

    def allotments(self) -> Allotments:
        """Every user's fair-share weight (those set) and every reservation, for the kernel."""
        with self.db.session() as s:
            shares = {
                name: float(share)
                for name, share in s.execute(
                    select(UserRow.name, UserRow.share).where(UserRow.share.is_not(None))
                )
                if share is not None
            }
            by_model: dict[str, dict[str, Reservation]] = {}
            for name, r in s.execute(
                select(UserRow.name, ReservationRow).join(
                    UserRow, UserRow.id == ReservationRow.user_id
                )
            ):
                by_model.setdefault(r.model, {})[name] = _reservation(r)
        return Allotments(shares=shares, reservations=by_model)


def _reservation(r: ReservationRow) -> Reservation:
    return Reservation(blocks=r.blocks or 0, slots=r.slots, fraction=r.fraction)


def _info(user: str, r: ReservationRow) -> ReservationInfo:
    return ReservationInfo(user, r.model, r.blocks, r.fraction, r.slots)
