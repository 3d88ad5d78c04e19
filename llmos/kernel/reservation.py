"""Reservations: a guaranteed minimum of KV blocks and running slots per owner on one pool.

An owner with unfinished processes is *active*. The unused part of an active owner's
reservation (its outstanding reserve) is never taken by other owners; an idle owner's whole
reservation is lent to everyone. When an owner's work arrives, the scheduler admits it in the
same tick, preempting borrowers (owners above their own guarantee) as needed. Invariant, kept by
the scheduler through this ledger: after any allocation by owner X, the free blocks cover the
outstanding reserves of every other active owner, and the free slots cover their outstanding
slots. Feasibility (checked when a reservation is made, and again when a pool receives them):
the reservations of one model sum to at most its pool and its `max_num_seqs`.

See docs/design/reservations.md.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from llmos.errors import Conflict
from llmos.kernel.process import Process

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Reservation:
    """One owner's guarantee on one model: `blocks` KV blocks (or `fraction` of the pool) and
    `slots` running processes."""

    blocks: int = 0
    slots: int = 0
    fraction: float | None = None  # of the pool; when set, blocks = floor(fraction * pool)

    def num_blocks(self, pool_blocks: int) -> int:
        if self.fraction is not None:
            return math.floor(self.fraction * pool_blocks)
        return self.blocks


@dataclass(frozen=True, slots=True)
class Allotments:
    """What the system hands the kernel: fair-share weights per owner, and the reservations of
    each model (model id -> owner -> reservation). Plain data; the kernel never reads storage."""

    shares: Mapping[str, float] = field(default_factory=dict)
    reservations: Mapping[str, Mapping[str, Reservation]] = field(default_factory=dict)


def check_feasible(
    model: str, reservations: Mapping[str, Reservation], num_blocks: int, max_num_seqs: int
) -> None:
    """Raise Conflict, with the numbers, if `reservations` cannot all be honoured at once on a
    pool of `num_blocks` blocks and `max_num_seqs` running slots."""
    owners = sorted(reservations)
    blocks = {o: reservations[o].num_blocks(num_blocks) for o in owners}
    total_blocks = sum(blocks.values())
    if total_blocks > num_blocks:
        parts = ", ".join(f"{o} {blocks[o]}" for o in owners if blocks[o])
        raise Conflict(
            f"Reservations on {model} would hold {total_blocks} KV blocks ({parts}) but its pool "
            f"has {num_blocks}.",
            code="reservation_overcommitted",
            hint="lower a reservation (`llmos users reserve`) or remove one "
            "(`llmos users unreserve`)",
        )
    total_slots = sum(r.slots for r in reservations.values())
    if total_slots > max_num_seqs:
        parts = ", ".join(f"{o} {reservations[o].slots}" for o in owners if reservations[o].slots)
        raise Conflict(
            f"Reservations on {model} would hold {total_slots} running slots ({parts}) but "
            f"kernel.max_num_seqs is {max_num_seqs}.",
            code="reservation_overcommitted",
            hint="lower --slots of a reservation or raise kernel.max_num_seqs",
        )


class ReservationLedger:
    """The reservations of one pool and, during a tick, each holder's use of them."""

    def __init__(self, num_blocks: int, max_num_seqs: int) -> None:
        self.num_blocks = num_blocks
        self.max_num_seqs = max_num_seqs
        self.reserved: dict[str, tuple[int, int]] = {}  # owner -> (blocks, slots)
        self._blocks: Counter[str] = Counter()  # blocks in the tables of running processes
        self._slots: Counter[str] = Counter()  # running processes
        self._active: set[str] = set()  # holders with unfinished processes

    @property
    def is_empty(self) -> bool:
        return not self.reserved

    def set(self, model: str, reservations: Mapping[str, Reservation]) -> None:
        """Replace the reservations; a set that cannot be honoured keeps the holders that fit
        (by owner name) and logs the rest (the check when they were made should prevent it)."""
        kept: dict[str, Reservation] = {}
        for owner in sorted(reservations):
            trial = kept | {owner: reservations[owner]}
            try:
                check_feasible(model, trial, self.num_blocks, self.max_num_seqs)
            except Conflict as e:
                logger.warning("reservation of %s on %s ignored: %s", owner, model, e.message)
                continue
            kept = trial
        self.reserved = {
            o: (r.num_blocks(self.num_blocks), r.slots)
            for o, r in kept.items()
            if r.num_blocks(self.num_blocks) or r.slots
        }

    def begin(self, running: Iterable[Process], unfinished: Iterable[Process]) -> None:
        """Count each holder's use at the start of a tick."""
        self._blocks.clear()
        self._slots.clear()
        for p in running:
            if p.owner in self.reserved:
                self._blocks[p.owner] += len(p.block_table)
                self._slots[p.owner] += 1
        self._active = {p.owner for p in unfinished if p.owner in self.reserved}

    def take(self, owner: str, num_blocks: int, num_slots: int) -> None:
        if owner in self.reserved:
            self._blocks[owner] += num_blocks
            self._slots[owner] += num_slots

    def release(self, owner: str, num_blocks: int, num_slots: int) -> None:
        self.take(owner, -num_blocks, -num_slots)

    def outstanding(self, exclude: str) -> tuple[int, int]:
        """(blocks, slots) held back for active holders other than `exclude`."""
        num_blocks = num_slots = 0
        for owner in self._active:
            if owner != exclude:
                blocks, slots = self.reserved[owner]
                num_blocks += max(0, blocks - self._blocks[owner])
                num_slots += max(0, slots - self._slots[owner])
        return num_blocks, num_slots

    def covers(self, owner: str, num_blocks: int) -> tuple[bool, bool]:
        """Whether `owner`'s guarantee covers `num_blocks` more blocks, and one more slot."""
        blocks, slots = self.reserved.get(owner, (0, 0))
        return (
            self._blocks[owner] + num_blocks <= blocks,
            self._slots[owner] + 1 <= slots,
        )

    def is_protected(self, owner: str) -> bool:
        """A holder within its guarantee (blocks and slots): others may not preempt it."""
        if owner not in self.reserved:
            return False
        blocks, slots = self.reserved[owner]
        return self._blocks[owner] <= blocks and self._slots[owner] <= slots
