"""Per-model demand (requests and tokens per time window) and a forecast of the next window.

Recording is a dict update under a lock, safe from the driver thread and the event loop; nothing
here does I/O on its own. `flush` hands the windows counted since the last flush to a
`DemandStore` (the planner thread calls it), and `load` reads them back at start, so a restart
keeps the history. Windows are aligned to the epoch (`window_idx = t // window_s`); a window no
request touched counts as 0.

The forecast of the next window, for requests and tokens alike (docs/design/preload.md), is a
multiplicative seasonal model in its simplest form:

    forecast = usual(next) * (today + 1) / (usual_today + 1)
    usual(i)    = the mean count of window i's time of day over the last `d` days of the model's
                  history (d = whole days it covers, at most `history_days`)
    today       = EWMA (weight `alpha`) of the model's counts in the recent completed windows
    usual_today = the same EWMA over usual() of those windows

"What this time of day usually brings next, scaled by how busy today has been against usual"
(the +1 keeps the scale near 1 when both are small). With under a day of history (d = 0) the
forecast is the EWMA level of the recent windows, the current one included as it stands so far
(recency). A model used every morning is thus predicted before its first request, and one whose
hours are over is predicted idle even while it was busy a moment ago.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

DAY_S = 86_400.0
# Windows of history folded into the EWMA level; alpha=0.3 gives the oldest a weight < 1e-3.
LEVEL_WINDOWS = 24

DemandRow = tuple[str, float, int, int]  # (model, window start in epoch s, requests, tokens)


class DemandStore(Protocol):
    """Where demand windows persist (`llmos.storage.demand` in a server; tests pass a dict)."""

    def load_demand(self, since_s: float) -> list[DemandRow]:
        """Every stored window that starts at or after `since_s`."""
        ...

    def save_demand(self, rows: list[DemandRow], *, keep_since_s: float) -> None:
        """Store `rows` (replacing the counts of windows already stored) and drop windows that
        start before `keep_since_s`, in one transaction."""
        ...


@dataclass(frozen=True, slots=True)
class Forecast:
    """The predicted demand of one model in the next window, and what it was made of."""

    model: str
    requests: float  # predicted requests in the next window
    tokens: float  # predicted tokens (prompt + output) in the next window
    level_requests: float  # the EWMA part
    seasonal_requests: float | None  # the time-of-day part (None: under a day of history)
    num_days: int  # whole days of history behind `seasonal_requests`
    window_s: float


@dataclass(frozen=True, slots=True)
class _Usual:
    num_requests: float
    num_tokens: float


@dataclass(slots=True)
class _Counts:
    num_requests: int = 0
    num_tokens: int = 0


class DemandHistory:
    """Demand per model per window, in memory, with `forecast` and persistence via `store`."""

    def __init__(
        self,
        *,
        window_s: float = 300.0,
        alpha: float = 0.3,
        history_days: int = 7,
        day_s: float = DAY_S,
        clock: Callable[[], float] = time.time,
        store: DemandStore | None = None,
    ) -> None:
        if window_s <= 0 or day_s < window_s:
            raise ValueError(f"need 0 < window_s <= day_s, got {window_s} and {day_s}")
        self.window_s = window_s
        self.alpha = alpha
        self.history_days = history_days
        self.day_s = day_s
        self.windows_per_day = max(1, round(day_s / window_s))
        self.clock = clock
        self.store = store
        self._lock = threading.Lock()
        self._counts: dict[str, dict[int, _Counts]] = {}
        self._dirty: set[tuple[str, int]] = set()
        self._first_idx: dict[str, int] = {}  # each model's first window in the history

    def _idx(self, t_s: float) -> int:
        return math.floor(t_s / self.window_s)

    # ---- recording (any thread, no I/O) -----------------------------------------------------

    def record(
        self, model: str, *, num_requests: int = 0, num_tokens: int = 0, now_s: float | None = None
    ) -> None:
        """Count `num_requests` and `num_tokens` for `model` in the window of `now_s`."""
        idx = self._idx(self.clock() if now_s is None else now_s)
        with self._lock:
            c = self._counts.setdefault(model, {}).setdefault(idx, _Counts())
            c.num_requests += num_requests
            c.num_tokens += num_tokens
            self._dirty.add((model, idx))
            self._first_idx[model] = min(self._first_idx.get(model, idx), idx)

    # ---- persistence (the planner thread) ---------------------------------------------------

    def load(self) -> int:
        """Read the stored history back (at start); returns how many windows were read."""
        if self.store is None:
            return 0
        oldest_s = (self._idx(self.clock()) - self._max_age_windows()) * self.window_s
        rows = self.store.load_demand(oldest_s)
        with self._lock:
            for model, start_s, num_requests, num_tokens in rows:
                idx = self._idx(start_s + self.window_s / 2)  # robust to float rounding
                c = self._counts.setdefault(model, {}).setdefault(idx, _Counts())
                # What was counted since start (not yet flushed) adds to what was stored.
                c.num_requests += num_requests
                c.num_tokens += num_tokens
                self._first_idx[model] = min(self._first_idx.get(model, idx), idx)
        return len(rows)

    def flush(self) -> int:
        """Write the windows counted since the last flush and prune the old; returns how many
        were written. A failing store raises and keeps them for the next flush."""
        now_idx = self._idx(self.clock())
        keep_idx = now_idx - self._max_age_windows()
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            rows = [
                (m, idx * self.window_s, c.num_requests, c.num_tokens)
                for m, idx in sorted(dirty)
                if (c := self._counts.get(m, {}).get(idx)) is not None
            ]
            for counts in self._counts.values():
                for idx in [i for i in counts if i < keep_idx]:
                    del counts[idx]
        if self.store is None:
            return 0
        try:
            self.store.save_demand(rows, keep_since_s=keep_idx * self.window_s)
        except BaseException:
            with self._lock:
                self._dirty |= dirty
            raise
        return len(rows)

    def _max_age_windows(self) -> int:
        return (self.history_days + 1) * self.windows_per_day

    # ---- reading -----------------------------------------------------------------------------

    @property
    def models(self) -> list[str]:
        with self._lock:
            return sorted(self._counts)

    def window(self, model: str, now_s: float | None = None) -> tuple[int, int]:
        """(requests, tokens) of `model` in the current window so far."""
        idx = self._idx(self.clock() if now_s is None else now_s)
        with self._lock:
            c = self._counts.get(model, {}).get(idx)
            return (c.num_requests, c.num_tokens) if c is not None else (0, 0)

    def forecast(self, model: str, now_s: float | None = None) -> Forecast:
        """The predicted demand of `model` in the window after the one of `now_s`."""
        now_s = self.clock() if now_s is None else now_s
        idx = self._idx(now_s)
        with self._lock:
            counts = dict(self._counts.get(model, {}))
            first_idx = self._first_idx.get(model, idx)
        # Windows before the model's history began are unknown, not idle.
        recent = range(max(idx - LEVEL_WINDOWS + 1, min(first_idx, idx)), idx + 1)
        zero = _Counts()
        level_r = _ewma([float(counts.get(i, zero).num_requests) for i in recent], self.alpha)
        level_t = _ewma([float(counts.get(i, zero).num_tokens) for i in recent], self.alpha)
        # Whole days behind the next window: its same slot on day k ago must be in the history.
        num_days = min(self.history_days, (idx + 1 - first_idx) // self.windows_per_day)
        if num_days == 0:
            return Forecast(model, level_r, level_t, level_r, None, 0, self.window_s)
        # Today against usual over the recent completed windows that have a day behind them
        # (the current one is partial).
        done = range(max(recent.start, first_idx + self.windows_per_day), idx)
        base = [self._usual(counts, i, first_idx) for i in done]
        nxt = self._usual(counts, idx + 1, first_idx)
        today_r = _ewma([float(counts.get(i, zero).num_requests) for i in done], self.alpha)
        usual_r = _ewma([u.num_requests for u in base], self.alpha)
        today_t = _ewma([float(counts.get(i, zero).num_tokens) for i in done], self.alpha)
        usual_t = _ewma([u.num_tokens for u in base], self.alpha)
        return Forecast(
            model,
            nxt.num_requests * (today_r + 1) / (usual_r + 1),
            nxt.num_tokens * (today_t + 1) / (usual_t + 1),
            level_r,
            nxt.num_requests,
            num_days,
            self.window_s,
        )

    def _usual(self, counts: dict[int, _Counts], idx: int, first_idx: int) -> _Usual:
        """The mean counts of window `idx`'s time of day over the days before it that the
        model's history covers (at most `history_days`)."""
        num_days = min(self.history_days, (idx - first_idx) // self.windows_per_day)
        if num_days <= 0:
            return _Usual(0.0, 0.0)
        same = [counts.get(idx - k * self.windows_per_day) for k in range(1, num_days + 1)]
        r = sum(c.num_requests for c in same if c is not None) / num_days
        t = sum(c.num_tokens for c in same if c is not None) / num_days
        return _Usual(r, t)

    def forecasts(self, models: Iterable[str], now_s: float | None = None) -> dict[str, Forecast]:
        now_s = self.clock() if now_s is None else now_s
        return {m: self.forecast(m, now_s) for m in models}


def _ewma(values: list[float], alpha: float) -> float:
    """The exponentially weighted mean of `values` (oldest first), started at the first."""
    if not values:
        return 0.0
    level = values[0]
    for v in values[1:]:
        level = alpha * v + (1 - alpha) * level
    return level
