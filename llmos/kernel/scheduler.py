"""The scheduler: which processes run this tick, how many tokens each, and who gets preempted.

Invariants: the tokens scheduled in one tick never exceed the token budget; a process is in at
most one of waiting / running / swapped; every running process's block table covers the tokens
it has computed plus the tokens scheduled for it this tick; a process that ends has no blocks
and no swap slots.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from llmos.kernel.memory import BlockPool
from llmos.kernel.policy import POLICIES
from llmos.kernel.process import Process, ProcessState
from llmos.kernel.swap import SwapSpace
from llmos.kernel.tickcost import PrefillAllowance, TickCost

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class ScheduledProcess:
    proc: Process
    num_new_tokens: int
    needs_logits: bool  # the chunk ends at the process's last token: sample after it


@dataclass(slots=True)
class Batch:
    """The scheduler's answer for one tick (plain data for the runner)."""

    items: list[ScheduledProcess] = field(default_factory=list)
    swap_out: list[tuple[int, int]] = field(default_factory=list)  # (pool block, swap slot)
    swap_in: list[tuple[int, int]] = field(default_factory=list)  # (swap slot, pool block)
    preempted: list[Process] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(item.num_new_tokens for item in self.items)


class Scheduler:
    def __init__(
        self,
        pool: BlockPool,
        swap: SwapSpace,
        *,
        max_num_batched_tokens: int,
        max_num_seqs: int,
        policy: str = "priority",
        tick_cost: TickCost | None = None,
    ) -> None:
        self.pool = pool
        self.swap = swap
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        if policy not in POLICIES:
            raise ValueError(f"unknown scheduling policy {policy!r}: one of {sorted(POLICIES)}")
        self.policy = POLICIES[policy]()
        self.key = self.policy.key
        self.tick_cost = tick_cost  # None: prefill chunks may fill the whole token budget
        self._prefill: PrefillAllowance | None = None  # this tick's prefill share
        self._charged: dict[int, int] = {}  # pid -> tokens already charged to its owner
        self.waiting: list[Process] = []
        self.running: list[Process] = []
        self.swapped: list[Process] = []
        self._swap_slots: dict[int, list[int]] = {}
        self._block_hashes: dict[int, list[bytes]] = {}  # chained hashes of full blocks
        self._num_registered: dict[int, int] = {}  # leading blocks already published
        self._seq_no = 0
        self.watermark_blocks = max(1, pool.num_blocks // 100)
        self.num_preemptions = 0
        self.num_swap_outs = 0
        self.num_recomputes = 0

    # ---- process lifecycle ---------------------------------------------------------------
    def add(self, proc: Process) -> None:
        self._seq_no += 1
        proc.seq_no = self._seq_no
        proc.state = ProcessState.WAITING
        self.policy.on_add(proc, (p.owner for p in self.waiting + self.running + self.swapped))
        self.waiting.append(proc)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.pool.block_size)

    def finish(self, proc: Process, state: ProcessState) -> None:
        """End a process in any queue and give back all its memory."""
        for queue in (self.waiting, self.running, self.swapped):
            if proc in queue:
                queue.remove(proc)
        self.pool.free(proc.block_table)
        proc.block_table = []
        self.swap.free(self._swap_slots.pop(proc.pid, []))
        self._block_hashes.pop(proc.pid, None)
        self._num_registered.pop(proc.pid, None)
        self._charged.pop(proc.pid, None)
        proc.is_swapped = False
        proc.state = state

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running) + len(self.swapped)

    # ---- one tick ------------------------------------------------------------------------
    def schedule(self) -> Batch:
        batch = Batch()
        self._preempt_for_priority(batch)
        self._prefill = self._prefill_allowance()
        num_priority_preempted = len(batch.preempted)
        budget = self._schedule_running(batch, self.max_num_batched_tokens)
        # memory ran short for running processes: admitting more now would only thrash
        if len(batch.preempted) == num_priority_preempted:
            self._schedule_queued(batch, budget)
        assert batch.num_tokens <= self.max_num_batched_tokens
        return batch

    def _schedule_running(self, batch: Batch, budget: int) -> int:
        queue = sorted(self.running, key=self.key)
        while queue and budget > 0:
            proc = queue.pop(0)
            n = self._chunk(proc, budget)
            if n == 0:
                continue  # a prefill with no share of this tick's time: it waits a tick
            need = self.blocks_for(proc.num_computed_tokens + n) - len(proc.block_table)
            while not self.pool.can_allocate(need):
                victim = queue.pop() if queue else proc
                self._preempt(victim, batch)
                if victim is proc:
                    break
            if proc.state is not ProcessState.RUNNING:
                continue
            proc.block_table.extend(self.pool.allocate(need))
            budget -= self._add(batch, proc, n)
        return budget

    def _schedule_queued(self, batch: Batch, budget: int) -> None:
        """Resume swapped processes and admit waiting ones, in policy order.

        Strict order: when the next process does not fit, nothing behind it is admitted, so a
        big process is not overtaken forever by small ones.
        """
        for proc in sorted(self.swapped + self.waiting, key=self.key):
            if budget <= 0 or len(self.running) >= self.max_num_seqs:
                break
            ok = (
                self._swap_in(proc, budget, batch)
                if proc.is_swapped
                else self._admit(proc, budget, batch)
            )
            if not ok:
                break
            budget -= batch.items[-1].num_new_tokens

    def _swap_in(self, proc: Process, budget: int, batch: Batch) -> bool:
        n = self._chunk(proc, budget)
        if n == 0:
            return False
        need = self.blocks_for(proc.num_computed_tokens + n)
        if proc in batch.preempted or not self.pool.can_allocate(need + self.watermark_blocks):
            return False
        blocks = self.pool.allocate(need)
        slots = self._swap_slots.pop(proc.pid)
        batch.swap_in.extend(zip(slots, blocks, strict=False))
        self.swap.free(slots)
        proc.block_table = blocks
        proc.is_swapped = False
        self.swapped.remove(proc)
        self._run(proc)
        self._add(batch, proc, n)
        return True

    def _admit(self, proc: Process, budget: int, batch: Batch) -> bool:
        if proc in batch.preempted:
            return False  # preempted this very tick: retry next tick
        is_first = proc.first_scheduled_s is None and proc.num_preemptions == 0
        cached = self.pool.find_cached_prefix(proc.token_ids, namespace=proc.cache_namespace)
        num_cached_tokens = len(cached) * self.pool.block_size
        n = self._chunk(proc, budget, start=num_cached_tokens)
        if n == 0:
            return False
        need = self.blocks_for(num_cached_tokens + n) - len(cached)
        num_cached_evictable = sum(1 for b in cached if self.pool.ref_count(b) == 0)
        if not self.pool.can_allocate(need + num_cached_evictable + self.watermark_blocks):
            return False
        self.pool.share(cached)
        proc.block_table = cached + self.pool.allocate(need)
        proc.num_computed_tokens = num_cached_tokens
        if is_first:
            proc.num_cached_tokens = num_cached_tokens
            full_blocks = (proc.num_prompt_tokens - 1) // self.pool.block_size
            self.pool.record_lookup(len(cached), full_blocks - len(cached))
        self.waiting.remove(proc)
        self._run(proc)
        self._add(batch, proc, n)
        return True

    def _preempt_for_priority(self, batch: Batch) -> None:
        """Preempt lower-class running processes when a higher-class one cannot be admitted."""
        if not self.waiting or not self.running:
            return
        best = min(self.waiting, key=self.key)
        need = self.blocks_for(min(best.num_tokens, self.max_num_batched_tokens))
        need += self.watermark_blocks
        victims = sorted(
            (p for p in self.running if p.priority > best.priority), key=self.key, reverse=True
        )
        while victims and not self.pool.can_allocate(need):
            self._preempt(victims.pop(0), batch)

    # ---- helpers -------------------------------------------------------------------------
    def _prefill_allowance(self) -> PrefillAllowance | None:
        """This tick's prefill share under a time target (stall-free ticks): none while
        nothing decodes, so a prefill may then fill the whole token budget."""
        if self.tick_cost is None:
            return None
        decoding = [p.num_tokens for p in self.running if p.num_tokens - p.num_computed_tokens == 1]
        return self.tick_cost.allowance(decoding, min(self.max_num_seqs, self.num_unfinished))

    def _chunk(self, proc: Process, budget: int, start: int | None = None) -> int:
        """Tokens `proc` computes this tick from `start` (default: where it is); 0 = none."""
        start = proc.num_computed_tokens if start is None else start
        n = min(proc.num_tokens - start, budget)
        if n > 1 and self._prefill is not None:
            n = self._prefill.take(start, n)
        return n

    def _run(self, proc: Process) -> None:
        proc.state = ProcessState.RUNNING
        self.running.append(proc)
        now_s = time.monotonic()
        if proc.scheduled_mono_s is None:
            proc.scheduled_mono_s = now_s
        if proc.preempted_since_s is not None:
            proc.preempted_s += now_s - proc.preempted_since_s
            proc.preempted_since_s = None

    def _add(self, batch: Batch, proc: Process, n: int) -> int:
        assert n >= 1
        needs_logits = proc.num_computed_tokens + n == proc.num_tokens
        batch.items.append(ScheduledProcess(proc, n, needs_logits))
        return n

    def _preempt(self, proc: Process, batch: Batch) -> None:
        """Swap the victim out if the swap area has room, else free its blocks to recompute."""
        self.running.remove(proc)
        proc.num_preemptions += 1
        self.num_preemptions += 1
        proc.preempted_since_s = time.monotonic()
        batch.preempted.append(proc)
        proc.state = ProcessState.PREEMPTED
        num_blocks = self.blocks_for(proc.num_computed_tokens)
        if num_blocks and self.swap.can_allocate(num_blocks):
            slots = self.swap.allocate(num_blocks)
            batch.swap_out.extend(zip(proc.block_table[:num_blocks], slots, strict=True))
            self._swap_slots[proc.pid] = slots
            proc.is_swapped = True
            self.swapped.append(proc)
            self.num_swap_outs += 1
        else:
            proc.num_computed_tokens = 0
            self.waiting.append(proc)
            self.num_recomputes += 1
        self.pool.free(proc.block_table)
        proc.block_table = []
        self._num_registered.pop(proc.pid, None)
        logger.debug("preempted pid=%d swapped=%s", proc.pid, proc.is_swapped)

    def _charge(self, proc: Process) -> None:
        """Tell the policy what `proc` was served: tokens computed for the first time (a
        recompute after preemption is not charged twice)."""
        start = self._charged.get(proc.pid, 0)
        end = proc.num_computed_tokens
        if end <= start:
            return
        num_prompt = max(0, min(end, proc.num_prompt_tokens) - start)
        self.policy.charge(proc, num_prompt, end - start - num_prompt)
        self._charged[proc.pid] = end

    # ---- after the forward pass ----------------------------------------------------------
    def on_computed(self, item: ScheduledProcess) -> None:
        """Advance a process past its scheduled tokens and publish its newly full blocks."""
        proc = item.proc
        proc.num_computed_tokens += item.num_new_tokens
        self._charge(proc)
        if not self.pool.enable_prefix_caching:
            return
        hashes = self._block_hashes.setdefault(proc.pid, [])
        full = proc.num_computed_tokens // self.pool.block_size
        start = self._num_registered.get(proc.pid, 0)
        if len(hashes) < full:
            self.pool.extend_hashes(hashes, proc.token_ids, full, namespace=proc.cache_namespace)
        for i in range(start, full):
            self.pool.register(proc.block_table[i], hashes[i])
        self._num_registered[proc.pid] = full
