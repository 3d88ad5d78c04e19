"""Reservations and wait reasons under scripted compute (no model): the guarantee holds within one
tick of the owner's arrival, idle reservations are lent, over-commit is refused, no block leaks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmos.errors import Conflict
from llmos.kernel.memory import BlockPool
from llmos.kernel.params import SamplingParams
from llmos.kernel.process import Priority, Process, ProcessState
from llmos.kernel.reservation import Reservation, check_feasible
from llmos.kernel.scheduler import Scheduler
from llmos.kernel.swap import SwapSpace
from tests.kernel.test_scheduler import Sim


class OwnerSim(Sim):
    """`Sim` with owners, a policy and reservations."""

    def __init__(self, *, policy="fair", reservations=None, caching=False, **kw):
        super().__init__(caching=caching, **kw)
        self.sched = Scheduler(
            self.pool,
            self.swap,
            max_num_batched_tokens=self.budget,
            max_num_seqs=self.sched.max_num_seqs,
            policy=policy,
            reservations=reservations or {},
        )
        self.offset = 0

    def submit_as(self, owner, prompt_len, max_tokens, priority=Priority.NORMAL):
        # distinct tokens per process: no prefix sharing, so block counts are exact
        p = Process(
            self.next_pid,
            list(range(self.offset, self.offset + prompt_len)),
            SamplingParams(max_tokens=max_tokens),
            owner=owner,
            priority=priority,
        )
        self.offset += prompt_len
        self.next_pid += 1
        self.procs[p.pid] = p
        self.sched.add(p)
        return p

    def blocks_of(self, owner):
        return sum(len(p.block_table) for p in self.sched.running if p.owner == owner)

    def live(self, owner):
        return [p for p in self.procs.values() if p.owner == owner and not p.state.is_terminal]


def flood(sim, owner="a", n=12, prompt_len=8, max_tokens=40):
    return [sim.submit_as(owner, prompt_len, max_tokens) for _ in range(n)]


def test_an_idle_reservation_is_lent_and_reclaimed_in_the_next_tick():
    sim = OwnerSim(
        num_blocks=32, block_size=4, budget=64, max_seqs=8, swap_slots=64,
        reservations={"b": Reservation(blocks=8, slots=1)},
    )  # fmt: skip
    flood(sim)
    peak = 0
    for _ in range(12):
        sim.step()
        sim.check()
        peak = max(peak, sim.blocks_of("a"))
    assert peak > 32 - 8  # a borrowed b's idle reservation
    b = sim.submit_as("b", 12, 4)
    batch = sim.step()
    assert b.state is ProcessState.RUNNING and b in [i.proc for i in batch.items]
    assert batch.preempted and all(p.owner == "a" for p in batch.preempted)
    sim.check()
    sim.run_to_end()
    assert sim.pool.stats().num_used == 0 and sim.swap.num_used == 0


def test_borrowers_do_not_take_an_active_owners_reserve():
    sim = OwnerSim(
        num_blocks=32, block_size=4, budget=64, max_seqs=8, swap_slots=64,
        reservations={"b": Reservation(blocks=16, slots=2)},
    )  # fmt: skip
    b = sim.submit_as("b", 4, 60)  # b is active from the start, using 1..16 blocks
    flood(sim)
    for _ in range(30):
        sim.step()
        sim.check()
        if b.state.is_terminal:
            break
        free = sim.pool.num_available
        assert free >= 16 - sim.blocks_of("b")  # b's unused reserve stays free
        assert b.state is ProcessState.RUNNING  # never preempted while within its guarantee


def test_without_reservations_a_flood_uses_the_whole_pool():
    sim = OwnerSim(num_blocks=32, block_size=4, budget=64, max_seqs=8, swap_slots=64)
    flood(sim)
    peak = 0
    for _ in range(12):
        sim.step()
        peak = max(peak, sim.blocks_of("a"))
    assert peak >= 32 - sim.sched.watermark_blocks - 1


def test_overcommit_is_refused_with_the_numbers():
    res = {"b": Reservation(blocks=20, slots=2), "c": Reservation(fraction=0.5, slots=2)}
    with pytest.raises(Conflict) as e:
        check_feasible("smollm2", res, 32, 8)
    assert "36 KV blocks" in e.value.message and "b 20, c 16" in e.value.message
    assert "has 32" in e.value.message
    with pytest.raises(Conflict, match=r"5 running slots .*max_num_seqs is 4"):
        check_feasible("m", {"b": Reservation(blocks=1, slots=3), "c": Reservation(slots=2)}, 32, 4)
    check_feasible(
        "m", {"b": Reservation(blocks=16, slots=4), "c": Reservation(fraction=0.5)}, 32, 4
    )


def test_an_overcommitted_set_keeps_what_fits():
    pool = BlockPool(10, 4)
    sched = Scheduler(
        pool, SwapSpace(0), max_num_batched_tokens=16, max_num_seqs=4,
        reservations={"a": Reservation(blocks=6, slots=1), "b": Reservation(blocks=6, slots=1)},
    )  # fmt: skip
    assert sched.ledger.reserved == {"a": (6, 1)}


def test_wait_reasons_name_the_layer_that_holds_a_process_back():
    sim = OwnerSim(num_blocks=8, block_size=4, budget=64, max_seqs=2, swap_slots=0)
    a1 = sim.submit_as("a", 8, 4)
    a2 = sim.submit_as("a", 8, 4)
    a3 = sim.submit_as("a", 8, 4)
    sim.step()
    assert a1.wait_reason is None and a2.wait_reason is None
    assert a3.wait_reason == "slots"
    sim.run_to_end()

    # memory: the head does not fit; behind it, the layer that put the head first
    sim = OwnerSim(num_blocks=8, block_size=4, budget=64, max_seqs=8, swap_slots=0)
    big = sim.submit_as("a", 24, 4)
    sim.step()
    head = sim.submit_as("a", 20, 4)  # needs 5 blocks + watermark, 2 are free
    nxt = sim.submit_as("a", 4, 4)
    other = sim.submit_as("b", 4, 4, priority=Priority.BATCH)
    sim.step()
    assert head.wait_reason == "memory"
    assert nxt.wait_reason == "queue"  # same owner, same class: an earlier arrival is ahead
    assert other.wait_reason == "priority"
    sim.run_to_end()
    assert big.state is ProcessState.FINISHED_LENGTH

    # fair share: another owner's smaller counter puts its blocked process ahead
    sim = OwnerSim(num_blocks=16, block_size=4, budget=64, max_seqs=8, swap_slots=0)
    sim.submit_as("a", 24, 8)
    sim.submit_as("b", 4, 20)
    for _ in range(3):
        sim.step()  # both backlogged; a is charged 24 prompt tokens, b only 4
    b_head = sim.submit_as("b", 40, 4)  # 10 blocks: does not fit
    a_late = sim.submit_as("a", 4, 4)
    sim.step()
    assert b_head.wait_reason == "memory"
    assert a_late.wait_reason == "fair-share"

    # token budget
    sim = OwnerSim(num_blocks=16, block_size=4, budget=8, max_seqs=8, swap_slots=0)
    sim.submit_as("a", 8, 4)
    second = sim.submit_as("a", 4, 4)
    sim.step()
    assert second.wait_reason == "token-budget"

    # capacity reserved for an active owner
    sim = OwnerSim(
        num_blocks=16, block_size=4, budget=64, max_seqs=8, swap_slots=0,
        reservations={"b": Reservation(blocks=8, slots=1)},
    )  # fmt: skip
    sim.submit_as("b", 2, 30)  # b active, using 1 block: 7 more are held for it
    sim.submit_as("a", 16, 4)
    sim.step()
    later = sim.submit_as("a", 20, 4)  # 5 blocks + watermark fit the pool, not beside b's 7
    sim.step()
    assert later.wait_reason == "reserved"


def test_preemption_is_reported():
    sim = OwnerSim(num_blocks=8, block_size=4, budget=64, max_seqs=4, swap_slots=32)
    low = sim.submit_as("a", 12, 20, priority=Priority.BATCH)
    sim.step()
    sim.submit_as("a", 24, 4, priority=Priority.INTERACTIVE)
    batch = sim.step()
    assert low in batch.preempted and low.wait_reason == "preempted" and low.is_swapped


@st.composite
def scenario(draw):
    num_blocks = draw(st.integers(16, 48))
    max_seqs = draw(st.integers(3, 8))
    owners = ["b", "c"][: draw(st.integers(1, 2))]
    reservations = {}
    left_blocks, left_slots = num_blocks, max_seqs - 1
    for o in owners:
        blocks = draw(st.integers(4, max(4, left_blocks // 2)))
        slots = draw(st.integers(1, max(1, left_slots // 2)))
        left_blocks -= blocks
        left_slots -= slots
        reservations[o] = Reservation(blocks=blocks, slots=slots)
    # per tick: how many flood processes "a" submits, and which holder (if any) arrives
    ticks = draw(
        st.lists(
            st.tuples(st.integers(0, 3), st.sampled_from([None, *owners])), min_size=5, max_size=40
        )
    )
    policy = draw(st.sampled_from(["fcfs", "priority", "fair"]))
    return num_blocks, max_seqs, reservations, ticks, policy


@settings(max_examples=60, deadline=None)
@given(scenario())
def test_reservations_are_honoured_within_one_tick(case):
    num_blocks, max_seqs, reservations, ticks, policy = case
    sim = OwnerSim(
        num_blocks=num_blocks, block_size=4, budget=32, max_seqs=max_seqs, swap_slots=16,
        policy=policy, reservations=reservations,
    )  # fmt: skip
    for n_flood, holder in ticks:
        for _ in range(n_flood):
            sim.submit_as("a", 6, 12)
        arrived = None
        if holder is not None and not sim.live(holder):  # a holder back from idle
            blocks, _ = sim.sched.ledger.reserved[holder]
            prompt_len = min(4 * blocks - 3, 16)  # prompt + output within its guarantee
            arrived = sim.submit_as(holder, prompt_len, 3)
        batch = sim.step()
        sim.check()
        if arrived is not None:
            assert arrived.state is ProcessState.RUNNING or arrived.state.is_terminal, (
                arrived.wait_reason
            )
        # a holder within its guarantee is never preempted; only the borrower is
        assert all(p.owner == "a" for p in batch.preempted)
    sim.run_to_end()
    assert sim.pool.stats().num_used == 0 and sim.swap.num_used == 0
