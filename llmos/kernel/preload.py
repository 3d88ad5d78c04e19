"""Which models should be resident: the eviction order and the preload plan, as pure functions
of plain data (one `Candidate` per model), so another policy (the placement MILP) can replace
them without touching the residency manager.

Invariants the residency manager relies on: a pinned, busy or non-reloadable model is never
chosen to be unloaded; a plan never needs more than `max_resident` models or `budget_bytes`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Candidate:
    """One model as the residency policy sees it."""

    model_id: str
    num_bytes: int  # measured when resident, else the load estimate (0: unknown)
    predicted_requests: float  # forecast demand in the next window
    last_used_s: float  # monotonic time of the last request (0: never)
    is_resident: bool
    is_pinned: bool = False  # `llmos models pin`: never unloaded
    is_reserved: bool = False  # a user holds a reservation on it: unloaded last
    is_busy: bool = False  # live processes or a request being admitted: cannot unload now
    is_reloadable: bool = True  # False: loaded from a path; the source cannot load it again
    is_recent: bool = False  # used moments ago: a preload never unloads it (forecasts can err)

    @property
    def can_unload(self) -> bool:
        return self.is_resident and not (self.is_pinned or self.is_busy) and self.is_reloadable


@dataclass(frozen=True, slots=True)
class Preload:
    """Load `model_id` now, after unloading `evict` (idle models predicted to be needed less)."""

    model_id: str
    evict: list[str]


def eviction_order(candidates: Iterable[Candidate]) -> list[str]:
    """The models that may be unloaded, the first to go first: unreserved before reserved, then
    the lowest predicted demand, then the least recently used."""
    free = [c for c in candidates if c.can_unload]
    free.sort(key=lambda c: (c.is_reserved, c.predicted_requests, c.last_used_s, c.model_id))
    return [c.model_id for c in free]


def choose_resident_set(
    candidates: Iterable[Candidate],
    *,
    max_resident: int,
    budget_bytes: int,
    min_requests: float,
) -> set[str]:
    """The models worth keeping resident in the next window, greedily: pinned and busy ones and
    those that cannot be reloaded first, then by predicted demand (at least `min_requests`),
    highest first, while they fit the count and the memory budget (0: none)."""
    must = [c for c in candidates if c.is_pinned or (c.is_resident and not c.can_unload)]
    wanted = sorted(
        (c for c in candidates if c not in must and c.predicted_requests >= min_requests),
        key=lambda c: (-c.predicted_requests, not c.is_resident, -c.last_used_s, c.model_id),
    )
    chosen: set[str] = set()
    used = 0
    for c in [*must, *wanted]:
        is_must = c in must
        fits = len(chosen) < max_resident and (
            not budget_bytes or used + c.num_bytes <= budget_bytes
        )
        if is_must or fits:
            chosen.add(c.model_id)
            used += c.num_bytes
    return chosen


def plan_preload(
    candidates: list[Candidate],
    *,
    max_resident: int,
    budget_bytes: int,
    min_requests: float,
) -> Preload | None:
    """The one model to preload now, if any: the most wanted model of `choose_resident_set` that
    is not resident and fits once idle models predicted not to be needed (below `min_requests`)
    are unloaded, never a pinned, busy or wanted one. None when nothing is worth loading or
    nothing can make room."""
    wanted = choose_resident_set(
        candidates, max_resident=max_resident, budget_bytes=budget_bytes, min_requests=min_requests
    )
    by_id = {c.model_id: c for c in candidates}
    missing = sorted(
        (by_id[m] for m in wanted if not by_id[m].is_resident),
        key=lambda c: (-c.is_pinned, -c.predicted_requests, c.model_id),
    )
    resident = [c for c in candidates if c.is_resident]
    # Only models predicted not to be needed make room for a preload: swapping one needed
    # model for another would trade a cold load for a cold load.
    spare = [
        by_id[m]
        for m in eviction_order(resident)
        if m not in wanted and by_id[m].predicted_requests < min_requests and not by_id[m].is_recent
    ]
    for target in missing:
        count = len(resident)
        used = sum(c.num_bytes for c in resident)
        evict: list[str] = []
        for victim in spare:
            if count < max_resident and (
                not budget_bytes or used + target.num_bytes <= budget_bytes
            ):
                break
            evict.append(victim.model_id)
            count -= 1
            used -= victim.num_bytes
        if count < max_resident and (not budget_bytes or used + target.num_bytes <= budget_bytes):
            return Preload(target.model_id, evict)
    return None
