"""The event vocabulary and the preemption storm detector (no I/O): one event per storm, re-armed
once the rate falls, restarted counters handled."""

from __future__ import annotations

from typing import Any

from llmos.monitor.events import EventKind, PreemptionStorms, Severity, format_duration_s


class Recorder:
    """An EventSink that keeps what it is given (the detector's only collaborator)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def record(self, kind: EventKind, **fields: Any) -> None:
        self.events.append({"kind": kind, **fields})


def test_a_storm_is_one_event_until_the_rate_falls_below_half() -> None:
    sink = Recorder()
    storms = PreemptionStorms(sink, threshold=10, window_s=60.0)
    assert not storms.observe("m", 0, 0.0)
    assert not storms.observe("m", 9, 30.0)  # 9 in the window: below the threshold
    assert storms.observe("m", 10, 40.0)  # 10 in 40 s: a storm
    assert [e["kind"] for e in sink.events] == [EventKind.PREEMPTION_STORM]
    event = sink.events[0]
    assert event["model"] == "m" and event["num_preemptions"] == 10
    assert "memory.kv_cache_bytes" in event["message"]
    for t, count in ((50.0, 30), (60.0, 60), (90.0, 80)):  # still storming: no new event
        assert not storms.observe("m", count, t)
    assert not storms.observe("m", 82, 200.0)  # calm: 2 in the last window, re-armed
    assert not storms.observe("m", 84, 230.0)
    assert storms.observe("m", 95, 250.0)  # a second storm, a second event
    assert len(sink.events) == 2


def test_old_preemptions_leave_the_window() -> None:
    sink = Recorder()
    storms = PreemptionStorms(sink, threshold=10, window_s=60.0)
    storms.observe("m", 0, 0.0)
    storms.observe("m", 8, 10.0)
    assert not storms.observe("m", 16, 100.0)  # 8 since t=10, which is older than the window
    assert not storms.observe("m", 17, 105.0)
    assert sink.events == []


def test_models_are_counted_apart_and_a_restarted_counter_starts_over() -> None:
    sink = Recorder()
    storms = PreemptionStorms(sink, threshold=5, window_s=60.0)
    storms.observe("a", 100, 0.0)
    storms.observe("b", 0, 0.0)
    assert not storms.observe("b", 4, 1.0)  # b's own count, not a's 100
    assert not storms.observe("a", 2, 2.0)  # a's engine was rebuilt: counter back near 0
    assert storms.observe("a", 7, 3.0)
    assert [e["model"] for e in sink.events] == ["a"]


def test_every_kind_has_a_severity_and_durations_read_well() -> None:
    assert all(isinstance(k.default_severity, Severity) for k in EventKind)
    assert EventKind.ENGINE_CRASHLOOP.default_severity is Severity.ERROR
    assert EventKind.MODEL_LOADED.default_severity is Severity.INFO
    assert format_duration_s(42) == "42 s"
    assert format_duration_s(20 * 60) == "20 min"
    assert format_duration_s(3.5 * 3600) == "3.5 h"
