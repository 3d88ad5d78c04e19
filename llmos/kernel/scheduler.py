"""The scheduler: which processes run this tick, how many tokens each, and who gets preempted.

Invariants: the tokens scheduled in one tick never exceed the token budget; a process is in at
most one of waiting / running / swapped; every running process's block table covers the tokens
it has computed plus the tokens scheduled for it this tick; a process that ends has no blocks
and no swap slots. Reservations (`kernel.reservation`): no owner takes blocks or slots held for
another active owner's guarantee, and an owner's queued work within its guarantee is admitted in
the tick it is first seen, preempting borrowers (victims in the policy's order reversed). Every
queued process passed over in a tick carries the reason (`Process.wait_reason`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from llmos.kernel.memory import BlockPool
from llmos.kernel.policy import SchedulingPolicy, holding_layer, make_policy
from llmos.kernel.process import Process, ProcessState
from llmos.kernel.reservation import Reservation, ReservationLedger
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
        policy: str | SchedulingPolicy = "priority",
        shares: Mapping[str, float] | None = None,
        reservations: Mapping[str, Reservation] | None = None,
        model: str = "model",
        tick_cost: TickCost | None = None,
    ) -> None:
        self.pool = pool
        self.swap = swap
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.policy = make_policy(policy) if isinstance(policy, str) else policy
        self.key = self.policy.key
        self.model = model
        self.set_shares(shares or {})
        self.ledger = ReservationLedger(pool.num_blocks, max_num_seqs)
        self.ledger.set(model, reservations or {})
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
        self.schedule_s = 0.0  # time spent in `schedule` since start (the per-tick cost)

    # ---- allotments (from the system, between ticks) -------------------------------------
    def set_shares(self, shares: Mapping[str, float]) -> None:
        """Per-owner fair-share weights, for any policy that keeps a `shares` dict."""
        if isinstance(getattr(self.policy, "shares", None), dict):
            self.policy.shares = dict(shares)  # type: ignore[attr-defined]

    def set_reservations(self, reservations: Mapping[str, Reservation]) -> None:
        self.ledger.set(self.model, reservations)

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
        started_s = time.perf_counter()
        try:
            return self._schedule()
        finally:
            self.schedule_s += time.perf_counter() - started_s

    def _schedule(self) -> Batch:
        batch = Batch()
        if not self.ledger.is_empty:
            self.ledger.begin(self.running, self.waiting + self.running + self.swapped)
        self._preempt_for_slot(batch)
        self._preempt_for_priority(batch)
        self._prefill = self._prefill_allowance()
        budget = self._admit_reserved(batch, self.max_num_batched_tokens)
        num_preempted = len(batch.preempted)
        budget = self._schedule_running(batch, budget)
        # memory ran short for running processes: admitting more now would only thrash
        if len(batch.preempted) == num_preempted:
            self._schedule_queued(batch, budget)
        else:
            for proc in self.swapped + self.waiting:
                if proc not in batch.preempted:
                    proc.wait_reason = "memory"
        assert batch.num_tokens <= self.max_num_batched_tokens
        return batch

    def _schedule_running(self, batch: Batch, budget: int) -> int:
        scheduled = {item.proc.pid for item in batch.items}  # admitted this tick already
        queue = sorted((p for p in self.running if p.pid not in scheduled), key=self.key)
        while queue and budget > 0:
            proc = queue.pop(0)
            n = self._chunk(proc, budget)
            if n == 0:
                continue  # a prefill with no share of this tick's time: it waits a tick
            need = self.blocks_for(proc.num_computed_tokens + n) - len(proc.block_table)
            while not self._can_take(proc.owner, need):
                victim = self._victim(queue, proc)
                self._preempt(victim, batch)
                if victim is proc:
                    break
            if proc.state is not ProcessState.RUNNING:
                continue
            proc.block_table.extend(self.pool.allocate(need))
            self.ledger.take(proc.owner, need, 0)
            budget -= self._add(batch, proc, n)
        return budget

    def _can_take(self, owner: str, num_blocks: int, num_extra: int = 0) -> bool:
        """Whether `owner` may take `num_blocks` (plus `num_extra` kept free) without touching
        blocks held for other active owners' reservations."""
        held, _ = self.ledger.outstanding(owner) if not self.ledger.is_empty else (0, 0)
        return self.pool.can_allocate(num_blocks + num_extra + held)

    def _victim(self, queue: list[Process], proc: Process) -> Process:
        """The last process of `queue` (policy order) that `proc` may preempt: its owner's own,
        or one whose owner is not within a reservation; else `proc` itself."""
        for i in range(len(queue) - 1, -1, -1):
            owner = queue[i].owner
            if owner == proc.owner or not self.ledger.is_protected(owner):
                return queue.pop(i)
        return proc

    def _schedule_queued(self, batch: Batch, budget: int) -> None:
        """Resume swapped processes and admit waiting ones, in policy order.

        Strict order: when the next process does not fit, nothing behind it is admitted, so a
        big process is not overtaken forever by small ones. Each process left waiting is told
        why: the resource it lacks, or the policy layer that put the blocked one ahead of it.
        """
        blocked: Process | None = None
        for proc in sorted(self.swapped + self.waiting, key=self.key):
            if blocked is not None:
                proc.wait_reason = holding_layer(self.policy, blocked, proc)
                continue
            reason = self._queued_reason(proc, budget, batch)
            if reason is None:
                reason = (
                    self._swap_in(proc, budget, batch)
                    if proc.is_swapped
                    else self._admit(proc, budget, batch)
                )
            if reason is None:
                budget -= batch.items[-1].num_new_tokens
                continue
            proc.wait_reason = reason
            if reason not in ("token-budget", "slots", "tick-time"):  # these hold back all alike
                blocked = proc

    def _queued_reason(self, proc: Process, budget: int, batch: Batch) -> str | None:
        """Why `proc` cannot start now before memory is asked (None: it may try)."""
        if proc in batch.preempted:
            return "preempted"  # preempted this very tick: retry next tick
        if budget <= 0:
            return "token-budget"
        if len(self.running) >= self.max_num_seqs:
            return "slots"
        if not self.ledger.is_empty:
            _, held = self.ledger.outstanding(proc.owner)
            if len(self.running) + 1 + held > self.max_num_seqs:
                return "reserved"
        return None

    def _no_room(self, owner: str, num_blocks: int, num_extra: int) -> str | None:
        """None if `owner` may take the blocks, else "memory" or "reserved"."""
        if not self.pool.can_allocate(num_blocks + num_extra):
            return "memory"
        return None if self._can_take(owner, num_blocks, num_extra) else "reserved"

    def _swap_in(
        self, proc: Process, budget: int, batch: Batch, *, is_reserved: bool = False
    ) -> str | None:
        n = self._chunk(proc, budget)
        if n == 0:
            return "tick-time"  # no share of this tick's time for its prefill: next tick
        need = self.blocks_for(proc.num_computed_tokens + n)
        extra = 0 if is_reserved else self.watermark_blocks
        if (reason := self._no_room(proc.owner, need, extra)) is not None:
            return reason
        blocks = self.pool.allocate(need)
        slots = self._swap_slots.pop(proc.pid)
        batch.swap_in.extend(zip(slots, blocks, strict=False))
        self.swap.free(slots)
        proc.block_table = blocks
        proc.is_swapped = False
        self.swapped.remove(proc)
        self._run(proc)
        self._add(batch, proc, n)
        return None

    def _admit(
        self, proc: Process, budget: int, batch: Batch, *, is_reserved: bool = False
    ) -> str | None:
        """Start a waiting process (None), or say why it cannot start now."""
        is_first = proc.first_scheduled_s is None and proc.num_preemptions == 0
        cached = self.pool.find_cached_prefix(proc.token_ids, namespace=proc.cache_namespace)
        num_cached_tokens = len(cached) * self.pool.block_size
        n = self._chunk(proc, budget, start=num_cached_tokens)
        if n == 0:
            return "tick-time"  # no share of this tick's time for its prefill: next tick
        need = self.blocks_for(num_cached_tokens + n) - len(cached)
        num_cached_evictable = sum(1 for b in cached if self.pool.ref_count(b) == 0)
        extra = num_cached_evictable + (0 if is_reserved else self.watermark_blocks)
        if (reason := self._no_room(proc.owner, need, extra)) is not None:
            return reason
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
        return None

    def _admit_reserved(self, batch: Batch, budget: int) -> int:
        """Admit, before anything else runs, the queued processes that their owners'
        reservations cover, preempting borrowers just enough to make room; returns the budget
        left. Leaves one token per running process so decodes keep flowing."""
        if self.ledger.is_empty:
            return budget
        share = max(1, budget - len(self.running))
        for proc in sorted(self.swapped + self.waiting, key=self.key):
            if share <= 0:
                break
            if proc in batch.preempted or proc.owner not in self.ledger.reserved:
                continue
            n = min(proc.num_tokens - proc.num_computed_tokens, share)  # takes no tick time
            need = self.blocks_for(proc.num_computed_tokens + n if proc.is_swapped else n)
            if not self._reclaim(proc, need, batch):
                continue
            admit = self._swap_in if proc.is_swapped else self._admit
            if admit(proc, share, batch, is_reserved=True) is None:
                share -= batch.items[-1].num_new_tokens
                budget -= batch.items[-1].num_new_tokens
        return budget

    def _reclaim(self, proc: Process, need: int, batch: Batch) -> bool:
        """If its owner's guarantee covers `proc` (`need` blocks and a slot), preempt borrowers
        (policy order reversed) until it fits; whether it fits."""
        if not all(self.ledger.covers(proc.owner, need)):
            return False
        scheduled = {item.proc.pid for item in batch.items}
        victims = sorted(
            (
                p
                for p in self.running
                if p.owner != proc.owner
                and p.pid not in scheduled
                and not self.ledger.is_protected(p.owner)
            ),
            key=self.key,
        )
        if not self._can_take(proc.owner, need - sum(len(p.block_table) for p in victims)):
            return False  # even every borrower's blocks would not make room: keep them
        while not (self._can_take(proc.owner, need) and len(self.running) < self.max_num_seqs):
            if not victims:
                return False
            self._preempt(victims.pop(), batch)
        return True

    def _preempt_for_slot(self, batch: Batch) -> None:
        """Every running slot is taken and a new arrival comes before the last running process
        in policy order: preempt that one (one per tick). Only arrivals never scheduled, and only
        when nothing queued comes before them, so two processes cannot take turns evicting each
        other. Under fcfs it never fires (an arrival is always last); under llmos it lets a
        short job or a light owner's first request past long-running work."""
        if len(self.running) < self.max_num_seqs or not self.waiting:
            return
        best = min(self.swapped + self.waiting, key=self.key)
        if best.is_swapped or best.num_preemptions or best.first_scheduled_s is not None:
            return
        worst = max(self.running, key=self.key)
        if worst.owner != best.owner and self.ledger.is_protected(worst.owner):
            return  # within its owner's reservation: only that owner's work may displace it
        if self.key(best) < self.key(worst):
            self._preempt(worst, batch)

    def _preempt_for_priority(self, batch: Batch) -> None:
        """Preempt lower-class running processes when a higher-class one cannot be admitted."""
        if not self.waiting or not self.running:
            return
        best = min(self.waiting, key=self.key)
        need = self.blocks_for(min(best.num_tokens, self.max_num_batched_tokens))
        need += self.watermark_blocks
        # Only processes after `best` in policy order (under fcfs, class alone would preempt a
        # process that is then readmitted first: a livelock).
        victims = sorted(
            (
                p
                for p in self.running
                if p.priority > best.priority
                and self.key(p) > self.key(best)
                and (p.owner == best.owner or not self.ledger.is_protected(p.owner))
            ),
            key=self.key,
            reverse=True,
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
        proc.wait_reason = None
        self.running.append(proc)
        self.ledger.take(proc.owner, len(proc.block_table), 1)
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
        self.ledger.release(proc.owner, len(proc.block_table), 1)
        proc.wait_reason = "preempted"
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
