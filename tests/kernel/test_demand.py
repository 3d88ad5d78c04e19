"""The demand history and its forecast (`llmos.kernel.demand`), with an injected clock: no
sleeping, every time is explicit. Covers the EWMA level, the time-of-day part after a day of
history, persistence through a store (a restart keeps the history), and pruning."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmos.kernel.demand import DemandHistory, DemandRow

W = 60.0  # window
DAY = 24 * W  # a compressed day of 24 windows


class Clock:
    def __init__(self, t_s: float = 0.0) -> None:
        self.t_s = t_s

    def __call__(self) -> float:
        return self.t_s


class DictStore:
    """A DemandStore over a dict, as the database table behaves (replace by key, prune)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, float], tuple[int, int]] = {}
        self.num_saves = 0

    def load_demand(self, since_s: float) -> list[DemandRow]:
        return [(m, t, r, k) for (m, t), (r, k) in sorted(self.rows.items()) if t >= since_s]

    def save_demand(self, rows: list[DemandRow], *, keep_since_s: float) -> None:
        self.num_saves += 1
        for m, t, r, k in rows:
            self.rows[(m, t)] = (r, k)
        self.rows = {key: v for key, v in self.rows.items() if key[1] >= keep_since_s}


def history(clock: Clock, store: DictStore | None = None, **kw: float) -> DemandHistory:
    return DemandHistory(window_s=W, day_s=DAY, alpha=0.5, clock=clock, store=store, **kw)  # type: ignore[arg-type]


def test_no_history_predicts_nothing() -> None:
    f = history(Clock(1000.0)).forecast("a")
    assert f.requests == 0 and f.tokens == 0 and f.seasonal_requests is None


def test_the_level_follows_recent_windows_and_decays_when_idle() -> None:
    clock = Clock(0.0)
    h = history(clock)
    for _ in range(4):  # 4 windows of 10 requests each
        h.record("a", num_requests=10, num_tokens=500)
        clock.t_s += W
    h.record("a", num_requests=10)
    busy = h.forecast("a")
    assert busy.requests == pytest.approx(10.0) and busy.seasonal_requests is None
    assert busy.tokens > 0
    clock.t_s += 3 * W  # three idle windows: 10 -> 5 -> 2.5 -> 1.25 with alpha 0.5
    assert h.forecast("a").requests == pytest.approx(1.25)
    assert h.forecast("b").requests == 0  # per model


def test_a_daily_pattern_is_predicted_before_its_first_request() -> None:
    """Day 1: `a` is used in windows 8..11 only. On day 2 at window 7 (`a` idle for most of a
    day) the forecast of window 8 is yesterday's; after its hours it is ~0 although it was
    busy a moment ago."""
    clock = Clock(0.0)
    h = history(clock)
    for idx in range(8, 12):
        h.record("a", num_requests=20, now_s=idx * W + 1)
    clock.t_s = DAY + 7 * W + 5  # day 2, window 7: the next window is 8
    f = h.forecast("a")
    assert f.num_days == 1 and f.seasonal_requests == 20
    assert f.level_requests == pytest.approx(0.0, abs=1e-3)
    assert f.requests == pytest.approx(20.0, abs=1e-3)
    for idx in range(8, 12):  # day 2 goes as usual
        h.record("a", num_requests=20, now_s=DAY + idx * W + 1)
    clock.t_s = DAY + 11 * W + W / 2  # in its last window, the level still high
    f = h.forecast("a")
    assert f.level_requests > 15 and f.requests < 0.5  # next window: usually idle


def test_a_busier_day_than_usual_scales_the_forecast() -> None:
    clock = Clock(0.0)
    h = history(clock)
    for day in range(3):  # three days with 12 requests in windows 5, 6 and 7
        for idx in (5, 6, 7):
            h.record("a", num_requests=12, now_s=day * DAY + idx * W + 1)
    clock.t_s = 3 * DAY + 4 * W + W - 1  # end of window 4 today: as usual so far
    assert h.forecast("a").requests == pytest.approx(12, rel=1e-3)
    for idx in (5, 6):  # today 30 instead of 12
        h.record("a", num_requests=30, now_s=3 * DAY + idx * W + 1)
    clock.t_s = 3 * DAY + 6 * W + W - 1  # end of window 6; completed: window 5 (30 vs 12)
    f = h.forecast("a")
    assert f.num_days == 3 and f.seasonal_requests == 12
    # today = 0.5 * 30, usual today = 0.5 * 12 (alpha 0.5 after idle windows): 12 * 16 / 7
    assert f.requests == pytest.approx(12 * 16 / 7, rel=1e-3)


def test_a_new_model_is_forecast_from_its_own_history_only() -> None:
    clock = Clock(0.0)
    h = history(clock)
    h.record("old", num_requests=5, now_s=0.0)
    clock.t_s = 3 * DAY
    h.record("new", num_requests=9)  # first used today: no day of its own history yet
    f = h.forecast("new")
    assert f.num_days == 0 and f.seasonal_requests is None and f.requests == 9
    assert h.forecast("old").num_days == 3


def test_history_survives_a_restart_through_the_store() -> None:
    clock, store = Clock(0.0), DictStore()
    h = history(clock, store)
    h.record("a", num_requests=7, num_tokens=70, now_s=3 * W)
    h.record("a", num_requests=1, num_tokens=9, now_s=3 * W + 5)
    h.record("b", num_requests=2, now_s=4 * W)
    assert h.flush() == 2 and store.rows[("a", 3 * W)] == (8, 79)
    assert h.flush() == 0  # nothing new
    clock.t_s = DAY + 2 * W
    before = h.forecast("a", now_s=clock.t_s)
    again = history(clock, store)  # a new server process
    again.record("a", num_requests=1, now_s=3 * W + 7)  # counted before the history was read
    assert again.load() == 2
    assert again.window("a", now_s=3 * W) == (9, 79)  # stored + new
    after = again.forecast("a", now_s=clock.t_s)
    assert after.num_days == before.num_days == 1
    assert after.seasonal_requests is not None and after.seasonal_requests >= 8
    again.flush()
    assert store.rows[("a", 3 * W)] == (9, 79)


def test_old_windows_are_pruned_from_memory_and_store() -> None:
    clock, store = Clock(0.0), DictStore()
    h = history(clock, store, history_days=2)
    h.record("a", num_requests=1, now_s=0.0)
    h.flush()
    clock.t_s = 4 * DAY
    h.record("a", num_requests=1)
    h.flush()
    assert [key[1] for key in store.rows] == [4 * DAY]
    assert h.window("a", now_s=0.0) == (0, 0)


def test_a_failing_store_keeps_the_windows_for_the_next_flush() -> None:
    clock, store = Clock(0.0), DictStore()
    h = history(clock, store)
    h.record("a", num_requests=3)
    broken = store.save_demand

    def fail(rows: list[DemandRow], *, keep_since_s: float) -> None:
        raise OSError("disk gone")

    store.save_demand = fail  # type: ignore[method-assign]
    with pytest.raises(OSError):
        h.flush()
    store.save_demand = broken  # type: ignore[method-assign]
    assert h.flush() == 1 and store.rows[("a", 0.0)] == (3, 0)


@settings(max_examples=60, deadline=None)
@given(
    rate=st.integers(0, 50),
    num_days=st.integers(1, 4),
    hour=st.integers(0, 23),
)
def test_steady_demand_is_forecast_as_it_is(rate: int, num_days: int, hour: int) -> None:
    """The same count in every window, for days: the forecast is that count, at any hour."""
    h = history(Clock(0.0))
    for idx in range(num_days * 24 + hour + 1):
        h.record("a", num_requests=rate, now_s=idx * W)
    f = h.forecast("a", now_s=(num_days * 24 + hour) * W + W / 2)
    assert f.num_days >= num_days and f.requests == pytest.approx(rate, abs=1e-6)
