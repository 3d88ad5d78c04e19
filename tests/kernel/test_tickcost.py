"""Stall-free ticks: the tick cost model learns from fed timings (no real tick is timed), and the
scheduler sizes each tick's prefill share to fit the time target, never starving a prompt."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmos.config import KernelConfig
from llmos.kernel.engine import tick_cost
from llmos.kernel.process import Priority, ProcessState
from llmos.kernel.tickcost import TickCost, TickCostModel, TickShape, num_attended
from tests.kernel.test_scheduler import Sim

# A planted machine: 12 ms a tick, 2.5 ms a decode token, 1.1 ms a prefill token, 1.5 us a key.
A_S, DECODE_S, PREFILL_S, KEY_S = 0.012, 0.0025, 0.0011, 1.5e-6


def planted_s(shape: TickShape) -> float:
    return (
        A_S
        + DECODE_S * shape.num_decode_tokens
        + PREFILL_S * shape.num_prefill_tokens
        + KEY_S * shape.num_attended
    )


def random_shape(rng: random.Random) -> TickShape:
    chunks = [(rng.randint(10, 900), 1) for _ in range(rng.randint(0, 64))]
    if rng.random() < 0.6 or not chunks:
        chunks.append((rng.randint(0, 900), rng.randint(2, 512)))
    return TickShape.of(chunks)


def trained(num_ticks=400, noise=0.05, seed=0, scale=1.0) -> TickCostModel:
    rng = random.Random(seed)
    model = TickCostModel()
    for _ in range(num_ticks):
        shape = random_shape(rng)
        model.observe(shape, scale * planted_s(shape) * (1 + rng.uniform(-noise, noise)))
    return model


def test_shape_counts_decode_prefill_and_attended_keys():
    shape = TickShape.of([(10, 1), (0, 4), (100, 1)])
    assert shape == TickShape(2, 4, 11 + (1 + 2 + 3 + 4) + 101)
    assert num_attended(5, 3) == 6 + 7 + 8


def test_model_learns_a_planted_linear_cost():
    model = trained(noise=0.0)
    rng = random.Random(99)
    for _ in range(50):
        shape = random_shape(rng)
        assert model.predict_s(shape) == pytest.approx(planted_s(shape), rel=0.01, abs=1e-3)
    assert model.prefill_s(0, 256) == pytest.approx(
        PREFILL_S * 256 + KEY_S * num_attended(0, 256), rel=0.01
    )


def test_model_fit_is_close_under_noise_and_shrugs_off_a_stall():
    model = trained(noise=0.2)
    probe = TickShape(16, 64, 16 * 300 + num_attended(0, 64))
    before = model.predict_s(probe)
    assert before == pytest.approx(planted_s(probe), rel=0.05)
    model.observe(probe, 100 * planted_s(probe))  # one tick stalled by something else
    assert model.predict_s(probe) == pytest.approx(before, rel=0.05)  # unclipped: +30 %


def test_model_follows_a_machine_that_got_slower():
    model = trained(seed=1)
    rng = random.Random(2)
    for _ in range(1500):  # the machine is now twice as slow (another tenant arrived)
        shape = random_shape(rng)
        model.observe(shape, 2 * planted_s(shape))
    probe = TickShape(8, 128, 8 * 200 + num_attended(0, 128))
    assert model.predict_s(probe) == pytest.approx(2 * planted_s(probe), rel=0.05)


def test_early_fit_does_not_extrapolate_one_noisy_tick_to_a_big_batch():
    """Warm-up ticks, one full prefill tick, then a slow tick with two decoders: sixteen
    decoders are not predicted to cost eight times two (the prior holds the per-token split)."""
    model = TickCostModel()
    ticks = [(TickShape.of([(0, 8)]), 0.025)]
    ticks += [(TickShape.of([(8 + i, 1)]), 0.015) for i in range(3)]
    ticks += [(TickShape.of([(0, 256), (0, 256)]), 0.545)]
    ticks += [(TickShape.of([(256, 1)] * 2 + [(0, 23)]), 0.068)]
    for shape, seconds in ticks:
        model.observe(shape, seconds)
    assert model.is_ready
    assert model.predict_s(TickShape.decode([257] * 16)) < 0.06


def test_unready_model_puts_no_limit():
    model = TickCostModel()
    shape = TickShape(4, 0, 1000)
    for _ in range(20):
        model.observe(shape, 0.02)  # decode ticks only: a prefill token's cost is unknown
    assert not model.is_ready
    assert TickCost(model=model).allowance([200] * 4, 4) is None
    assert TickCost(model=trained()).allowance([], 8) is None  # nothing decodes


def test_allowance_fits_the_target_and_grants_the_first_chunk_a_minimum():
    model = trained(noise=0.0)
    cost = TickCost(target_ms=100, min_prefill_tokens=16, model=model)
    decoders = [300] * 16
    allowance = cost.allowance(decoders, 16)
    assert allowance is not None
    n = allowance.take(0, 512)
    assert 0 < n < 512
    shape = TickShape.of([(299, 1)] * 16 + [(0, n)])
    assert (
        model.predict_s(shape)
        <= 0.1
        < model.predict_s(TickShape.of([(299, 1)] * 16 + [(0, n + 1)]))
    )
    assert planted_s(shape) == pytest.approx(0.1, rel=0.02)
    assert allowance.take(n, 512) == 0  # the tick is full: the next chunk waits
    tight = TickCost(target_ms=1, min_prefill_tokens=16, model=trained(noise=0.0))
    allowance = tight.allowance(decoders, 16)
    assert allowance is not None
    assert allowance.take(0, 512) == 16  # over target already: the first chunk still moves
    assert allowance.take(16, 512) == 0


def test_auto_target_is_a_multiple_of_the_decode_tick_heading_for_the_full_batch():
    model = trained(noise=0.0)
    cost = TickCost(target_factor=2.5, model=model)
    # two decoders now, fourteen prompts queued: the target is that of sixteen decoders
    target = cost.target_s([300, 300], 16)
    assert target == pytest.approx(2.5 * planted_s(TickShape(16, 0, 16 * 300)), rel=0.01)


def stall_free_sim(target_ms: float | None, min_tokens=4, factor=2.5, **kwargs) -> Sim:
    sim = Sim(**kwargs)
    sim.sched.tick_cost = TickCost(
        target_ms=target_ms,
        target_factor=factor,
        min_prefill_tokens=min_tokens,
        model=trained(noise=0.0),
    )
    return sim


def test_prefill_chunk_shrinks_to_fit_while_decoding_and_fills_the_budget_when_not():
    sim = stall_free_sim(60.0, num_blocks=512, block_size=4, budget=512, max_seqs=16)
    decoders = [sim.submit(range(i * 40, i * 40 + 20), 200) for i in range(8)]
    sim.step()  # their prefill: nothing was decoding, so the whole budget was open
    long = sim.submit(range(1000, 1900), 4)
    batch = sim.step()
    sizes = {i.proc.pid: i.num_new_tokens for i in batch.items}
    assert all(sizes[p.pid] == 1 for p in decoders)  # every decoder ran
    chunk = sizes[long.pid]
    assert 4 <= chunk < 100  # shrunk to the target, far below the 504 tokens left
    shape = TickShape.of(
        (i.proc.num_computed_tokens - i.num_new_tokens, i.num_new_tokens) for i in batch.items
    )
    assert planted_s(shape) <= 0.060
    for p in decoders:
        sim.kill(p.pid)
    batch = sim.step()  # nobody decodes: the prompt gets the whole token budget
    assert [(i.proc.pid, i.num_new_tokens) for i in batch.items] == [(long.pid, 512)]


def test_a_long_prompt_progresses_every_tick_even_under_an_impossible_target():
    sim = stall_free_sim(0.001, min_tokens=4, num_blocks=512, block_size=4, budget=64)
    decoders = [sim.submit(range(i * 10, i * 10 + 8), 400) for i in range(4)]
    sim.step()
    long = sim.submit(range(500, 700), 1)
    ticks = 0
    while long.state is not ProcessState.FINISHED_LENGTH:
        before = long.num_computed_tokens
        batch = sim.step()
        ticks += 1
        assert long.num_computed_tokens - before >= min(4, long.num_prompt_tokens - before)
        assert sum(1 for i in batch.items if i.num_new_tokens == 1) >= len(decoders) - 1
    assert ticks <= 200 // 4 + 1


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    target_ms=st.sampled_from([None, 0.001, 20.0, 80.0, 500.0]),
    min_tokens=st.integers(1, 16),
)
def test_random_workloads_stay_in_budget_and_every_prompt_finishes(seed, target_ms, min_tokens):
    rng = random.Random(seed)
    sim = stall_free_sim(
        target_ms,
        min_tokens=min_tokens,
        num_blocks=rng.randint(16, 64),
        block_size=rng.choice([1, 4, 8]),
        budget=rng.randint(8, 64),
        max_seqs=rng.randint(1, 8),
        swap_slots=rng.choice([0, 16]),
    )
    capacity = sim.pool.num_blocks * sim.pool.block_size
    for _ in range(rng.randint(10, 40)):
        if rng.random() < 0.4:
            n_prompt = rng.randint(1, max(1, capacity // 3))
            max_tokens = rng.randint(1, max(1, capacity // 4))
            if n_prompt + max_tokens <= capacity:
                prompt = [rng.randrange(50) for _ in range(n_prompt)]
                sim.submit(prompt, max_tokens, rng.choice(list(Priority)))
        else:
            prefilling = {
                p.pid: p.num_tokens - p.num_computed_tokens
                for p in sim.sched.running
                if p.num_tokens - p.num_computed_tokens > 1
            }
            batch = sim.step()  # Sim.step checks the token budget
            if prefilling and not batch.preempted:
                # some running prompt moved by the minimum (or what the token budget left)
                room = sim.budget - sum(1 for i in batch.items if i.num_new_tokens == 1)
                done = {i.proc.pid: i.num_new_tokens for i in batch.items}
                assert any(
                    done.get(pid, 0) >= min(min_tokens, left, room)
                    for pid, left in prefilling.items()
                )
        sim.check()
    sim.run_to_end()  # raises on starvation
    assert all(p.state.is_terminal for p in sim.procs.values())
    assert sim.pool.stats().num_used == 0


def test_config_switches_and_targets():
    assert tick_cost(KernelConfig(stall_free=False)) is None
    auto = tick_cost(KernelConfig())
    assert auto is not None and auto.target_ms is None and auto.target_factor == 2.5
    fixed = tick_cost(KernelConfig(tick_target_ms=80, min_prefill_chunk=32))
    assert fixed is not None and fixed.target_ms == 80 and fixed.min_prefill_tokens == 32
    with pytest.raises(ValueError):
        KernelConfig(tick_target_ms=0)
    with pytest.raises(ValueError):
        KernelConfig(tick_target_ms="fast")  # type: ignore[arg-type]
