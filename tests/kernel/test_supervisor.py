"""The supervisor's decisions: failures -> restart with backoff -> crash loop -> cool-down."""

from __future__ import annotations

import pytest

from llmos.kernel.supervisor import (
    Action,
    EngineState,
    EngineUnavailable,
    Supervisor,
    SupervisorPolicy,
)


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


POLICY = SupervisorPolicy(
    max_failures=3,
    failure_window_s=60.0,
    max_restarts=2,
    restart_backoff_s=1.0,
    restart_backoff_max_s=8.0,
    crashloop_cooldown_s=30.0,
)


def fail(sup: Supervisor, n: int, model: str = "m") -> list[Action]:
    return [sup.record_failure(model, f"boom {i}") for i in range(n)]


def test_isolated_failures_only_fail_their_batch() -> None:
    clock = Clock()
    sup = Supervisor(POLICY, clock)
    assert fail(sup, 2) == [Action.CONTINUE, Action.CONTINUE]
    clock.now_s += 61  # the window forgets them
    assert fail(sup, 2) == [Action.CONTINUE, Action.CONTINUE]
    assert sup.health("m").state is EngineState.OK
    assert sup.health("m").num_failures == 4
    assert sup.health("m").last_error == "boom 1"
    sup.check_available("m")


def test_repeated_failures_restart_with_exponential_backoff_then_crashloop() -> None:
    clock = Clock()
    sup = Supervisor(POLICY, clock)
    assert fail(sup, 3)[-1] is Action.RESTART
    h = sup._models["m"]
    assert h.state is EngineState.RESTARTING and h.backoff_s == 1.0
    with pytest.raises(EngineUnavailable) as info:
        sup.check_available("m")
    assert info.value.code == "engine_restarting"
    sup.restarted("m")
    assert sup.health("m").restarts == 1
    assert fail(sup, 3)[-1] is Action.RESTART
    assert sup._models["m"].backoff_s == 2.0  # doubled
    sup.restarted("m")
    # A third burst within the window: max_restarts (2) reached -> crash loop.
    assert fail(sup, 3)[-1] is Action.CRASHLOOP
    view = sup.health("m")
    assert view.state is EngineState.CRASHLOOP and view.restarts == 2
    with pytest.raises(EngineUnavailable) as info:
        sup.check_available("m")
    assert info.value.code == "engine_crashloop" and info.value.status_code == 503
    assert info.value.headers["Retry-After"] == "30"
    assert "boom 2" in info.value.message
    # Other models are untouched.
    sup.check_available("other")
    # After the cool-down the next request may try again.
    clock.now_s += 31
    sup.check_available("m")
    assert sup.health("m").state is EngineState.OK


def test_failures_during_a_restart_do_not_count_twice() -> None:
    sup = Supervisor(POLICY, Clock())
    assert fail(sup, 3)[-1] is Action.RESTART
    assert fail(sup, 5) == [Action.CONTINUE] * 5
    assert sup._models["m"].state is EngineState.RESTARTING


def test_a_failed_rebuild_is_a_crash_loop() -> None:
    sup = Supervisor(POLICY, Clock())
    fail(sup, 3)
    sup.restart_failed("m", "ModelLoadError: corrupt")
    with pytest.raises(EngineUnavailable, match="corrupt"):
        sup.check_available("m")


def test_stall_is_reported_and_clears() -> None:
    sup = Supervisor(POLICY, Clock())
    sup.set_stalled("m", True)
    assert sup.health("m").state is EngineState.STALLED
    sup.check_available("m")  # a stalled engine still takes requests (they queue)
    sup.set_stalled("m", False)
    assert sup.health("m").state is EngineState.OK


def test_an_engine_in_an_unknown_state_is_rebuilt_at_once() -> None:
    sup = Supervisor(POLICY, Clock())
    assert sup.record_failure("m", "KeyError: 3", needs_rebuild=True) is Action.RESTART
