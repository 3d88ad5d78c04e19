"""Placement by MILP: the plan equals brute-force enumeration on small inventories, capacity is
never exceeded, pins are honoured, and every refusal or unplaced model is explained in words."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmos.errors import InvalidRequest
from llmos.kernel.placement import (
    Device,
    ModelSpec,
    Plan,
    choose_resident_set,
    plan_placement,
)
from tests.kernel.placement_brute import brute_force

GIB = 1 << 30


# --- random small problems ----------------------------------------------------------------------

throughputs = st.one_of(
    st.none(),
    st.integers(0, 8),
    st.fixed_dictionaries({}, optional={"gpu": st.integers(0, 8), "host": st.integers(0, 8)}),
)


@st.composite
def problems(draw: st.DrawFn) -> tuple:
    num_devices = draw(st.integers(1, 3))
    devices = [
        Device(f"d{j}", draw(st.integers(0, 14)), draw(st.sampled_from(["host", "gpu"])))
        for j in range(num_devices)
    ]
    num_models = draw(st.integers(1, 4))
    models = [
        ModelSpec(
            f"m{i}",
            draw(st.integers(0, 10)),
            max_replicas=draw(st.sampled_from([None, 1, 2])),
            throughput=draw(throughputs),
        )
        for i in range(num_models)
    ]
    demand = {m.model_id: draw(st.integers(0, 12)) for m in models}
    names = [d.name for d in devices]
    current = {m.model_id: draw(st.lists(st.sampled_from(names), unique=True)) for m in models}
    pinned = {m.model_id: draw(st.lists(st.sampled_from(names), max_size=1)) for m in models}
    return devices, models, demand, current, pinned


@settings(max_examples=150, deadline=None)
@given(problems())
def test_plan_equals_brute_force(problem: tuple) -> None:
    devices, models, demand, current, pinned = problem
    best = brute_force(devices, models, demand, current, pinned)
    if best is None:  # only pins can make a problem infeasible: refused in words
        with pytest.raises(InvalidRequest, match="pinned"):
            plan_placement(devices, models, demand, current=current, pinned=pinned)
        return
    plan = plan_placement(devices, models, demand, current=current, pinned=pinned)
    assert plan.is_optimal
    assert plan.served_demand == pytest.approx(best[0], abs=1e-9)
    assert plan.objective[1:] == best[1:]
    _check_invariants(plan, devices, models, pinned)


def _check_invariants(
    plan: Plan,
    devices: Sequence[Device],
    models: Sequence[ModelSpec],
    pinned: Mapping[str, Sequence[str]],
) -> None:
    sizes = {m.model_id: m.footprint_bytes for m in models}
    for d, use in zip(devices, plan.devices, strict=True):
        assert use.used_bytes == sum(sizes[m] for m in use.models) <= d.capacity_bytes
    for m in models:
        p = plan.placement(m.model_id)
        assert set(pinned.get(m.model_id, ())) <= set(p.devices)
        assert 0 <= p.served <= p.demand
        assert p.reason  # every model says why
        if m.max_replicas is not None:
            assert len(p.devices) <= m.max_replicas
    assert plan.served_demand <= plan.served_bound + 1e-6


def test_full_size_plan_keeps_capacity_under_a_short_time_limit() -> None:
    rng = random.Random(7)
    devices = [Device(f"gpu{j}", rng.randint(8, 80) * GIB, "gpu") for j in range(16)]
    models = [
        ModelSpec(f"m{i}", rng.randint(1, 40) * GIB // 2, throughput=rng.choice([None, 30]))
        for i in range(50)
    ]
    demand = {m.model_id: rng.randint(1, 100) for m in models}
    plan = plan_placement(devices, models, demand, time_limit_s=0.05)
    _check_invariants(plan, devices, models, {})
    assert plan.served_demand > 0


# --- explanations -------------------------------------------------------------------------------


def test_a_model_too_big_for_every_device_says_so() -> None:
    devices = [Device("gpu0", 2 * GIB, "gpu"), Device("host", GIB)]
    plan = plan_placement(devices, [ModelSpec("big", int(3.2 * GIB))], {"big": 5})
    assert plan.placement("big").reason == "needs 3.2 GiB; the largest device, gpu0, has 2.0 GiB"
    assert plan.served_demand == 0 and plan.unplaced[0].model_id == "big"


def test_capacity_goes_to_higher_demand_and_the_loser_is_told() -> None:
    devices = [Device("host", 10 * GIB)]
    models = [ModelSpec("hot", 6 * GIB), ModelSpec("cold", 6 * GIB), ModelSpec("tiny", GIB)]
    plan = plan_placement(devices, models, {"hot": 50, "cold": 5, "tiny": 1})
    assert plan.resident_set == {"hot", "tiny"}
    assert plan.served_demand == 51 and plan.total_demand == 56
    reason = plan.placement("cold").reason
    assert reason.startswith("needs 6.0 GiB; every device it fits on is taken (host has 3.0 GiB")
    assert "holds hot, tiny" in reason and "at least as much demand" in reason
    assert plan.placement("hot").reason == "on host (load): serves all its demand (50)"


def test_throughput_spreads_replicas_and_partial_service_is_explained() -> None:
    devices = [Device("gpu0", 8 * GIB, "gpu"), Device("gpu1", 8 * GIB, "gpu")]
    busy = ModelSpec("busy", 4 * GIB, max_replicas=2, throughput={"gpu": 30})
    plan = plan_placement(devices, [busy], {"busy": 100})
    p = plan.placement("busy")
    assert p.devices == ("gpu0", "gpu1") and p.served == 60
    assert p.reason.endswith("serves 60 of 100; it may have at most 2 replica(s)")


def test_zero_throughput_and_zero_demand_are_explained() -> None:
    devices = [Device("host", 8 * GIB)]
    models = [ModelSpec("gpu-only", GIB, throughput={"gpu": 10}), ModelSpec("idle", GIB)]
    plan = plan_placement(devices, models, {"gpu-only": 5})
    assert "its throughput there is 0" in plan.placement("gpu-only").reason
    assert plan.placement("idle").reason == "no forecast demand"


def test_current_placement_breaks_ties_and_moves_are_listed() -> None:
    devices = [Device("gpu0", 4 * GIB, "gpu"), Device("gpu1", 4 * GIB, "gpu")]
    models = [ModelSpec("a", 3 * GIB), ModelSpec("b", 3 * GIB)]
    demand = {"a": 1, "b": 1}
    plan = plan_placement(devices, models, demand, current={"a": ["gpu1"], "b": ["gpu1"]})
    # Both cannot stay on gpu1: one is kept, the other loads on gpu0 (1 load, 1 unload).
    assert plan.objective[:3] == (2, 1, 1)
    kept = [m for m in ("a", "b") if plan.placement(m).devices == ("gpu1",)]
    assert len(kept) == 1 and "(kept)" in plan.placement(kept[0]).reason


def test_resident_set_prefers_current_models_on_ties() -> None:
    sizes = {"a": 4 * GIB, "b": 4 * GIB, "c": 4 * GIB}
    plan = choose_resident_set(9 * GIB, sizes, current=["c", "a"])
    assert plan.resident_set == {"a", "c"} and plan.loads == ()


def test_resident_set_keeps_pinned_models_over_higher_demand() -> None:
    sizes = {"pinned": 5 * GIB, "hot": 6 * GIB}
    plan = choose_resident_set(10 * GIB, sizes, {"pinned": 0, "hot": 100}, pinned=["pinned"])
    assert plan.resident_set == {"pinned"}
    assert plan.placement("pinned").reason.startswith("on host (pinned, load)")


def test_resident_set_with_equal_demand_keeps_the_most_models() -> None:
    sizes = {"big": 7 * GIB, "s1": 3 * GIB, "s2": 3 * GIB, "s3": 3 * GIB}
    assert choose_resident_set(9 * GIB, sizes).resident_set == {"s1", "s2", "s3"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pinned": ["a", "b"]}, "pinned models a, b need 11.0 GiB together; device host has"),
        ({"pinned": ["huge"]}, "pinned model huge needs 20.0 GiB; device host has 10.0 GiB"),
        ({"pinned": ["nope"]}, "pinned names unknown model 'nope' (known: a, b, huge)"),
    ],
)
def test_impossible_pins_are_refused_in_words(kwargs: dict, message: str) -> None:
    sizes = {"a": 6 * GIB, "b": 5 * GIB, "huge": 20 * GIB}
    with pytest.raises(InvalidRequest) as err:
        choose_resident_set(10 * GIB, sizes, **kwargs)
    assert err.value.message.startswith(message)


@pytest.mark.parametrize(
    ("devices", "models", "demand", "message"),
    [
        ([Device("h", 1)], [ModelSpec("a", 1)], {"b": 1}, "demand names unknown model 'b'"),
        ([Device("h", 1)], [ModelSpec("a", 1)], {"a": -1}, "demand of a is -1"),
        ([Device("h", 1)], [ModelSpec("a", 1)], {"a": float("nan")}, "demand of a is nan"),
        ([Device("h", 1), Device("h", 2)], [], {}, "device 'h' is listed twice"),
        ([Device("h", -1)], [], {}, "device h has a negative capacity"),
        ([Device("h", 1)], [ModelSpec("a", 1, max_replicas=0)], {}, "max_replicas 0"),
        (
            [Device("h", 1)],
            [ModelSpec("a", 1, throughput={"tpu": 1})],
            {},
            "throughput for 'tpu', which is neither a device nor a kind",
        ),
    ],
)
def test_bad_input_is_refused_in_words(devices, models, demand, message) -> None:
    with pytest.raises(InvalidRequest) as err:
        plan_placement(devices, models, demand)
    assert message in err.value.message


def test_pins_beyond_max_replicas_are_refused() -> None:
    devices = [Device("g0", GIB, "gpu"), Device("g1", GIB, "gpu")]
    with pytest.raises(InvalidRequest, match="pinned on 2 devices but may have at most 1"):
        plan_placement(devices, [ModelSpec("a", 1, max_replicas=1)], {}, pinned={"a": ["g0", "g1"]})


def test_no_devices_leaves_everything_unplaced_with_a_reason() -> None:
    plan = plan_placement([], [ModelSpec("a", 1)], {"a": 1})
    assert plan.placement("a").reason == "there are no devices"
    assert plan.served_demand == 0 and plan.is_optimal
