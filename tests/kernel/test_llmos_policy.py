"""The `llmos` policy (priority > fair share > shortest predicted remaining work, with aging),
driven through the real scheduler with scripted compute.

The aging bound under test: inside one priority class and owner, a process is never ordered
behind (so never first scheduled after) a process that arrived more than `aging_window_s` after
it, whatever either is predicted to need.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from llmos.kernel.memory import BlockPool
from llmos.kernel.params import SamplingParams
from llmos.kernel.policy import Llmos, make_policy
from llmos.kernel.process import Priority, Process, ProcessState
from llmos.kernel.scheduler import Scheduler
from llmos.kernel.swap import SwapSpace

BLOCK = 4
WINDOW_S = 10.0


class Sim:
    """The scheduler driven like the engine drives it, on a simulated clock (one tick = dt_s)."""

    def __init__(self, *, num_blocks=64, budget=32, max_seqs=4, swap_slots=16, window_s=WINDOW_S):
        self.pool = BlockPool(num_blocks, BLOCK)
        self.swap = SwapSpace(swap_slots)
        self.policy = Llmos(aging_window_s=window_s)
        self.sched = Scheduler(
            self.pool,
            self.swap,
            max_num_batched_tokens=budget,
            max_num_seqs=max_seqs,
            policy=self.policy,
        )
        self.now_s = 0.0
        self.next_pid = 1
        self.first_tick: dict[int, float] = {}
        self.procs: list[Process] = []
        self.out_tokens: dict[int, int] = {}  # pid -> tokens it produces before stopping

    def submit(self, out_tokens, *, predicted=None, owner="u", prompt=4, max_tokens=None, prio=1):
        p = Process(
            self.next_pid,
            list(range(100, 100 + prompt)),
            SamplingParams(max_tokens=max_tokens or out_tokens),
            owner=owner,
            priority=Priority(prio),
            arrival_s=self.now_s,
        )
        p.predicted_output_tokens = predicted
        self.out_tokens[p.pid] = out_tokens
        self.next_pid += 1
        self.sched.add(p)
        self.procs.append(p)
        return p

    def step(self, dt_s=1.0):
        batch = self.sched.schedule()
        for item in batch.items:
            p = item.proc
            self.first_tick.setdefault(p.pid, self.now_s)
            self.sched.on_computed(item)
            if item.needs_logits:
                p.token_ids.append(7)
                if p.num_output_tokens >= self.out_tokens[p.pid]:
                    self.sched.finish(p, ProcessState.FINISHED_LENGTH)
        self.now_s += dt_s
        return batch


def _proc(arrival_s, predicted, num_output, max_tokens):
    p = Process(1, [1, 2, 3], SamplingParams(max_tokens=max_tokens), arrival_s=arrival_s)
    p.predicted_output_tokens = predicted
    p.token_ids.extend([5] * min(num_output, max_tokens))
    return p


@settings(max_examples=300, deadline=None)
@given(
    arrivals=st.tuples(st.floats(0, 1e6), st.floats(0, 1e3)),
    predicted=st.tuples(
        st.one_of(st.none(), st.floats(0, 1e5)), st.one_of(st.none(), st.floats(0, 1e5))
    ),
    outputs=st.tuples(st.integers(0, 5000), st.integers(0, 5000)),
    max_tokens=st.tuples(st.integers(1, 8192), st.integers(1, 8192)),
)
def test_a_process_is_never_ordered_behind_one_arriving_a_window_later(
    arrivals, predicted, outputs, max_tokens
):
    policy = Llmos(aging_window_s=WINDOW_S)
    a = _proc(arrivals[0], predicted[0], outputs[0], max_tokens[0])
    b = _proc(arrivals[0] + WINDOW_S + arrivals[1] + 1e-3, predicted[1], outputs[1], max_tokens[1])
    a.seq_no, b.seq_no = 1, 2
    assert policy.key(a) < policy.key(b)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), num_long=st.integers(1, 4))
def test_under_a_stream_of_short_jobs_no_wait_exceeds_the_aging_bound(seed, num_long):
    """Long jobs arrive among a never-ending stream of short ones (the case plain shortest-job-
    first starves): every process is first scheduled no later than every process of its owner
    that arrived more than the window after it."""
    rng = random.Random(seed)
    sim = Sim(max_seqs=2)
    long_at = sorted(rng.sample(range(40), num_long))
    for tick in range(80):
        if tick in long_at:
            sim.submit(40, predicted=40.0)
        for _ in range(rng.randint(1, 2)):  # more short work than the engine drains
            sim.submit(3, predicted=float(rng.randint(2, 4)))
        sim.step(dt_s=0.5)
    for _ in range(5000):
        if not sim.sched.num_unfinished:
            break
        sim.step(dt_s=0.5)
    assert all(p.state is ProcessState.FINISHED_LENGTH for p in sim.procs)
    for p in sim.procs:
        for q in sim.procs:
            if q.arrival_s > p.arrival_s + WINDOW_S:
                assert sim.first_tick[p.pid] <= sim.first_tick[q.pid], (p.pid, q.pid)
    # ...and no long job was left to the end, as plain shortest-job-first would leave it
    last_s = max(sim.first_tick.values())
    for p in sim.procs:
        if sim.out_tokens[p.pid] == 40:
            assert sim.first_tick[p.pid] < last_s


def test_shortest_predicted_job_first_within_one_owner():
    sim = Sim(max_seqs=1, budget=64)
    long = sim.submit(30, predicted=300.0, max_tokens=512)
    mid = sim.submit(10, predicted=40.0, max_tokens=512)
    short = sim.submit(3, predicted=3.0, max_tokens=512)
    order = []
    for _ in range(200):
        for item in sim.step(dt_s=0.01).items:
            if item.proc.pid not in order:
                order.append(item.proc.pid)
    assert order == [short.pid, mid.pid, long.pid]


def test_cold_start_orders_by_max_tokens_then_arrival():
    sim = Sim(max_seqs=1, budget=64)
    first_big = sim.submit(8, max_tokens=500)
    small = sim.submit(4, max_tokens=16)
    second_big = sim.submit(8, max_tokens=500)
    order = []
    for _ in range(200):
        for item in sim.step(dt_s=0.01).items:
            if item.proc.pid not in order:
                order.append(item.proc.pid)
    assert order == [small.pid, first_big.pid, second_big.pid]


def test_priority_class_then_fair_share_come_before_length():
    sim = Sim(max_seqs=1, budget=64)
    batch_short = sim.submit(2, predicted=2.0, prio=int(Priority.BATCH))
    normal_long = sim.submit(20, predicted=400.0, max_tokens=512)
    assert sim.policy.key(normal_long) < sim.policy.key(batch_short)
    sim.policy.counters["heavy"] = 1000.0
    heavy_short = sim.submit(2, predicted=2.0, owner="heavy")
    assert sim.policy.key(normal_long) < sim.policy.key(heavy_short)


def test_the_victim_under_memory_pressure_has_the_longest_predicted_remaining_work():
    # 9 blocks of 4 tokens: three processes of 8 prompt tokens fit, then growth needs a victim
    sim = Sim(num_blocks=9, budget=64, max_seqs=8, swap_slots=32)
    procs = [sim.submit(12, predicted=pred, prompt=8, max_tokens=64) for pred in (5.0, 300.0, 40.0)]
    victims = []
    for _ in range(100):
        victims += [p.pid for p in sim.step(dt_s=0.01).preempted]
    assert victims and victims[0] == procs[1].pid
    assert all(p.state is ProcessState.FINISHED_LENGTH for p in procs)
    assert sim.pool.stats().num_used == 0 and sim.swap.num_used == 0


def test_a_misprediction_is_survived_not_killed():
    """A process predicted short that runs long keeps running to its end; its estimate grows
    with what it has produced, so it yields to newer short work (preemption order), not dies."""
    sim = Sim(max_seqs=4, budget=64)
    liar = sim.submit(60, predicted=2.0)
    for _ in range(30):
        sim.step(dt_s=0.01)
    assert sim.policy.deadline(liar) > liar.arrival_s + 0.3 * WINDOW_S
    for _ in range(100):
        sim.step(dt_s=0.01)
    assert liar.state is ProcessState.FINISHED_LENGTH and liar.num_output_tokens == 60


def test_policies_are_made_by_name():
    assert isinstance(make_policy("llmos", aging_window_s=5.0), Llmos)
    assert make_policy("llmos", aging_window_s=5.0).aging_window_s == 5.0  # type: ignore[attr-defined]
    for name in ("fcfs", "priority", "fair"):
        make_policy(name, aging_window_s=5.0)


def test_a_new_short_job_takes_the_slot_of_the_longest_running_one():
    sim = Sim(num_blocks=256, max_seqs=2, budget=64, swap_slots=64)
    longs = [sim.submit(200, predicted=200.0, max_tokens=512) for _ in range(2)]
    for _ in range(5):
        sim.step(dt_s=0.01)
    assert all(p.state is ProcessState.RUNNING for p in longs)
    short = sim.submit(3, predicted=3.0, max_tokens=512)
    batch = sim.step(dt_s=0.01)
    assert [p.pid for p in batch.preempted] == [longs[1].pid]  # the later arrival: larger key
    assert short.state is ProcessState.RUNNING
    for _ in range(500):
        sim.step(dt_s=0.01)
    assert all(p.state is ProcessState.FINISHED_LENGTH for p in [*longs, short])
    assert longs[0].num_preemptions == 0 and longs[1].num_preemptions == 1


def test_under_fcfs_an_arrival_never_preempts():
    pool = BlockPool(64, BLOCK)
    sched = Scheduler(pool, SwapSpace(16), max_num_batched_tokens=64, max_num_seqs=1, policy="fcfs")
    first = Process(1, [1, 2, 3], SamplingParams(max_tokens=50))
    sched.add(first)
    sched.schedule()
    sched.add(Process(2, [1, 2, 3], SamplingParams(max_tokens=1)))
    assert sched.schedule().preempted == [] and first.state is ProcessState.RUNNING
