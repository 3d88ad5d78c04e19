"""The residency policy's pure functions (`llmos.kernel.preload`): eviction order and the preload
plan never pick a pinned, busy or unreloadable model, and never need more than the count or the
memory budget allows."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from llmos.kernel.preload import Candidate, eviction_order, plan_preload

MB = 1 << 20


def c(
    mid: str, predicted: float, *, used: float = 0.0, resident: bool = True, **kw: object
) -> Candidate:
    return Candidate(
        mid, kw.pop("num_bytes", 100 * MB), predicted, used, is_resident=resident, **kw
    )  # type: ignore[arg-type]


def test_eviction_goes_by_predicted_demand_then_recency() -> None:
    order = eviction_order(
        [
            c("recent-but-unwanted", 0.1, used=100.0),
            c("old-but-wanted", 9.0, used=1.0),
            c("old-unwanted", 0.1, used=2.0),
            c("reserved", 0.0, used=0.0, is_reserved=True),
            c("pinned", 0.0, is_pinned=True),
            c("busy", 0.0, is_busy=True),
            c("from-path", 0.0, is_reloadable=False),
            c("not-resident", 0.0, resident=False),
        ]
    )
    assert order == ["old-unwanted", "recent-but-unwanted", "old-but-wanted", "reserved"]


def test_a_predicted_model_is_preloaded_into_free_room() -> None:
    plan = plan_preload(
        [c("a", 3.0), c("b", 5.0, resident=False)], max_resident=2, budget_bytes=0, min_requests=1
    )
    assert plan is not None and plan.model_id == "b" and plan.evict == []


def test_a_preload_replaces_only_an_idle_model_predicted_to_be_needed_less() -> None:
    cands = [c("a", 0.2, used=5.0), c("b", 6.0, resident=False)]
    plan = plan_preload(cands, max_resident=1, budget_bytes=0, min_requests=1)
    assert plan is not None and plan.evict == ["a"]
    busy = [c("a", 0.2, is_busy=True), c("b", 6.0, resident=False)]
    assert plan_preload(busy, max_resident=1, budget_bytes=0, min_requests=1) is None
    wanted = [c("a", 8.0), c("b", 6.0, resident=False)]  # a is wanted more: it stays
    assert plan_preload(wanted, max_resident=1, budget_bytes=0, min_requests=1) is None
    pinned = [c("a", 0.0, is_pinned=True), c("b", 6.0, resident=False)]
    assert plan_preload(pinned, max_resident=1, budget_bytes=0, min_requests=1) is None


def test_nothing_is_preloaded_below_the_threshold_or_beyond_the_budget() -> None:
    low = [c("a", 0.0), c("b", 0.5, resident=False)]
    assert plan_preload(low, max_resident=3, budget_bytes=0, min_requests=1) is None
    big = [c("a", 5.0, num_bytes=600 * MB), c("b", 6.0, resident=False, num_bytes=600 * MB)]
    assert plan_preload(big, max_resident=3, budget_bytes=1000 * MB, min_requests=1) is None
    fits = [c("a", 0.0, num_bytes=600 * MB), c("b", 6.0, resident=False, num_bytes=600 * MB)]
    plan = plan_preload(fits, max_resident=3, budget_bytes=1000 * MB, min_requests=1)
    assert plan is not None and plan.evict == ["a"]


def test_a_pinned_model_that_is_not_resident_is_loaded_first() -> None:
    cands = [c("a", 0.0), c("p", 0.0, resident=False, is_pinned=True), c("b", 9.0, resident=False)]
    plan = plan_preload(cands, max_resident=2, budget_bytes=0, min_requests=1)
    assert plan is not None and plan.model_id == "p"


flags = st.booleans()
candidate = st.builds(
    Candidate,
    model_id=st.sampled_from("abcdefgh"),
    num_bytes=st.integers(0, 800),
    predicted_requests=st.floats(0, 20),
    last_used_s=st.floats(0, 100),
    is_resident=flags,
    is_pinned=flags,
    is_reserved=flags,
    is_busy=flags,
    is_reloadable=flags,
)


@settings(max_examples=200, deadline=None)
@given(
    cands=st.lists(candidate, max_size=8, unique_by=lambda x: x.model_id),
    max_resident=st.integers(1, 5),
    budget=st.integers(0, 2000),
)
def test_a_plan_never_evicts_what_must_stay_and_always_fits(
    cands: list[Candidate], max_resident: int, budget: int
) -> None:
    plan = plan_preload(cands, max_resident=max_resident, budget_bytes=budget, min_requests=1.0)
    if plan is None:
        return
    by_id = {x.model_id: x for x in cands}
    target = by_id[plan.model_id]
    assert not target.is_resident
    for victim in plan.evict:
        v = by_id[victim]
        assert v.can_unload  # resident, idle, unpinned, reloadable
        assert v.predicted_requests < 1.0  # predicted not to be needed
    after = [x for x in cands if x.is_resident and x.model_id not in plan.evict]
    assert len(after) + 1 <= max_resident
    if budget:
        assert sum(x.num_bytes for x in after) + target.num_bytes <= budget
