"""The engine: one tick = schedule -> run -> sample -> update -> emit output deltas.

`submit`, `kill` and `renice` may be called from any thread: they go through an inbox that the
tick drains first. `step` runs on one thread only (the driver). Invariant: every process that
enters the kernel leaves it through exactly one finished ProcessOutput.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from llmos.config import KernelConfig, MemoryConfig
from llmos.errors import ContextTooLong, InvalidRequest
from llmos.kernel.memory import BlockPool, cache_namespace
from llmos.kernel.outputs import EngineStats, KernelTimes, ProcessOutput, TickFailed
from llmos.kernel.params import SamplingParams
from llmos.kernel.policy import make_policy
from llmos.kernel.predict import HistoryRecord, Predictor, features_of
from llmos.kernel.process import Priority, Process, ProcessInfo, ProcessState, ProcessTable
from llmos.kernel.reservation import Reservation
from llmos.kernel.runner import ModelRunner
from llmos.kernel.sampler import Sampler
from llmos.kernel.scheduler import Batch, Scheduler
from llmos.kernel.stops import OutputTracker
from llmos.kernel.swap import SwapSpace
from llmos.kernel.tickcost import TickCost, TickShape
from llmos.models.footprint import tensor_bytes
from llmos.models.registry import CausalLM
from llmos.ops.cpu import KVCache

logger = logging.getLogger(__name__)


class InjectedFault(RuntimeError):
    """The failure a test-only fault hook raises inside a tick."""


def set_compute_threads(num_threads: int) -> None:
    """One compute pool per process, one thread per core (0 = all cores)."""
    import os

    n = num_threads or os.cpu_count() or 1
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def num_pool_blocks(config: Any, memory: MemoryConfig) -> int:
    """KV blocks in the pool of a model with `config` (a ModelConfig) under `memory`."""
    block_bytes = KVCache.bytes_per_block(
        config.num_layers, memory.block_size, config.num_kv_heads, config.head_dim
    )
    return max(1, memory.kv_cache_bytes // block_bytes)


def tick_cost(kernel: KernelConfig) -> TickCost | None:
    """The stall-free tick budget the config asks for (None: prefill fills the token budget)."""
    if not kernel.stall_free:
        return None
    target = kernel.tick_target_ms
    return TickCost(
        target_ms=None if target == "auto" else float(target),
        target_factor=kernel.tick_target_factor,
        min_prefill_tokens=kernel.min_prefill_chunk,
    )


class Engine:
    """A kernel running one resident model: process table, scheduler, KV pool, runner."""

    def __init__(
        self,
        model: CausalLM,
        tokenizer: Any,
        *,
        model_name: str = "model",
        chat_template: str | None = None,
        kernel: KernelConfig | None = None,
        memory: MemoryConfig | None = None,
        pids: Iterator[int] | None = None,
        profile: dict[str, Any] | None = None,
        predictor: Predictor | None = None,
    ) -> None:
        self.kernel_config = kernel = kernel or KernelConfig()
        self.memory_config = memory = memory or MemoryConfig()
        set_compute_threads(kernel.num_threads)
        c = model.config
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        # The model's defaults as plain data (set fields of its stored profile; the kernel
        # never reads the registry): what a request omitting a field gets before llmos's own,
        # and a context length and chat template that replace the model's own.
        self.profile = dict(profile or {})
        self.chat_template = self.profile.get("chat_template") or chat_template
        self.max_model_len = min(
            kernel.max_model_len,
            c.max_position_embeddings,
            self.profile.get("context_length") or c.max_position_embeddings,
        )
        block_bytes = KVCache.bytes_per_block(
            c.num_layers, memory.block_size, c.num_kv_heads, c.head_dim
        )
        num_blocks = num_pool_blocks(c, memory)
        num_swap = memory.swap_bytes // block_bytes
        self.kv = KVCache(
            c.num_layers,
            num_blocks,
            memory.block_size,
            c.num_kv_heads,
            c.head_dim,
            num_swap_slots=num_swap,
            device=kernel.device,
        )
        self.pool = BlockPool(
            num_blocks, memory.block_size, enable_prefix_caching=memory.enable_prefix_caching
        )
        self.swap = SwapSpace(num_swap)
        self.scheduler = Scheduler(
            self.pool,
            self.swap,
            max_num_batched_tokens=kernel.max_num_batched_tokens,
            max_num_seqs=kernel.max_num_seqs,
            policy=make_policy(kernel.policy, aging_window_s=kernel.aging_window_s),
            model=model_name,
            tick_cost=tick_cost(kernel),
        )
        # Learns output lengths from this engine's finished processes (a server shares one
        # across its engines and stores the history: llmos.system).
        self.predictor = predictor or Predictor(
            max_records=kernel.predict_history_rows,
            window=kernel.predict_window,
            retrain_every=kernel.predict_retrain_every,
            min_records=kernel.predict_min_records,
        )
        self.tick_s = 0.0  # time spent in `step` since start
        self.runner = ModelRunner(
            model, self.kv, device=kernel.device, pad_to=None if kernel.batch_invariant else []
        )
        eos = list(getattr(tokenizer, "eos_token_ids", None) or c.eos_token_ids)
        self.eos_token_ids = eos
        self.sampler = Sampler(c.vocab_size, eos, seed=kernel.seed)
        self.pids: Iterator[int] = pids if pids is not None else itertools.count(1)
        self.table = ProcessTable(self.pids)
        self._inbox: collections.deque[tuple[str, Any]] = collections.deque()
        self._trackers: dict[int, OutputTracker] = {}
        self._counters = collections.Counter[str]()
        # Test-only faults (kind, hang_s) armed by the driver (`EngineLoop.arm_fault`).
        self.faults: collections.deque[tuple[str, float]] = collections.deque()
        self._lock = threading.Lock()
        logger.info(
            "model %s resident: %d KV blocks of %d tokens (%.0f MiB), %d swap blocks",
            model_name,
            num_blocks,
            memory.block_size,
            num_blocks * block_bytes / 2**20,
            num_swap,
        )

    # ---- system calls (any thread) -------------------------------------------------------
    def submit(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        *,
        owner: str = "local",
        priority: Priority = Priority.NORMAL,
    ) -> int:
        """Validate and queue a new process; returns its pid. Raises on bad input.

        Its prefix-cache hits come only from processes of the same `owner`, or of the same
        `params.cache_salt`, unless `memory.prefix_cache_scope` is "global".
        """
        vocab = self.model.config.vocab_size
        if not prompt_token_ids:
            raise InvalidRequest("The prompt is empty.", param="prompt")
        if min(prompt_token_ids) < 0 or max(prompt_token_ids) >= vocab:
            raise InvalidRequest(f"Prompt token ids must be in 0..{vocab - 1}.", param="prompt")
        params.validate(vocab)
        n_prompt = len(prompt_token_ids)
        max_tokens = params.max_tokens
        if max_tokens is None:
            max_tokens = self.max_model_len - n_prompt
        if n_prompt + max_tokens > self.max_model_len or max_tokens < 1:
            raise ContextTooLong(
                f"This model's maximum context length is {self.max_model_len} tokens; the "
                f"request has {n_prompt} prompt tokens and asks for {max_tokens} more.",
                param="max_tokens",
                hint="shorten the prompt or lower max_tokens",
            )
        num_blocks = self.scheduler.blocks_for(n_prompt + max_tokens)
        if num_blocks > self.pool.num_blocks:
            raise ContextTooLong(
                f"The request needs {num_blocks} KV blocks but the whole pool has "
                f"{self.pool.num_blocks}.",
                param="max_tokens",
                hint="lower max_tokens or raise memory.kv_cache_bytes",
            )
        pid = self.table.new_pid()
        proc = Process(
            pid,
            list(prompt_token_ids),
            params,
            owner=owner,
            cache_namespace=cache_namespace(
                owner, params.cache_salt, self.memory_config.prefix_cache_scope
            ),
            model=self.model_name,
            priority=priority,
        )
        # Features and prediction on the caller's thread, never in the tick.
        proc.features = features_of(
            prompt_token_ids,
            params,
            tokenizer=self.tokenizer,
            max_tokens=max_tokens,
            model=self.model_name,
            owner=owner,
        )
        proc.predicted_output_tokens = self.predictor.predict(proc.features)
        self.table.add(proc)
        self._inbox.append(("submit", proc))
        return pid

    def kill(self, pid: int) -> bool:
        proc = self.table.get(pid)
        if proc is None or proc.state.is_terminal:
            return False
        self._inbox.append(("kill", pid))
        return True

    def renice(self, pid: int, priority: Priority) -> bool:
        proc = self.table.get(pid)
        if proc is None or proc.state.is_terminal:
            return False
        self._inbox.append(("renice", (pid, priority)))
        return True

    def set_allotments(
        self, shares: Mapping[str, float], reservations: Mapping[str, Reservation]
    ) -> None:
        """New fair-share weights and this model's reservations, from the next tick on."""
        self._inbox.append(("allot", (dict(shares), dict(reservations))))

    def processes(self) -> list[ProcessInfo]:
        return self.table.snapshot()

    def has_work(self) -> bool:
        return bool(self._inbox) or self.scheduler.num_unfinished > 0

    @property
    def name(self) -> str:
        """The name the driver ticks this engine by (the model's)."""
        return self.model_name

    def memory_bytes(self) -> int:
        """Bytes of the tensors this engine holds: weights, KV pool and swap area."""
        return tensor_bytes((self.model, self.kv))

    def rebuild(self) -> Engine:
        """A fresh engine (new KV pool, scheduler, process table) around the same weights."""
        return Engine(
            self.model,
            self.tokenizer,
            model_name=self.model_name,
            chat_template=self.chat_template,
            kernel=self.kernel_config,
            memory=self.memory_config,
            pids=self.pids,
            profile=self.profile,
            predictor=self.predictor,
        )

    # ---- the tick (driver thread only) ---------------------------------------------------
    def step(self) -> list[ProcessOutput]:
        """Run one tick and return what each process produced in it."""
        started_s = time.perf_counter()
        try:
            return self._step()
        finally:
            self.tick_s += time.perf_counter() - started_s

    def _step(self) -> list[ProcessOutput]:
        with self._lock:
            outputs = self._drain_inbox()
            start_s = time.perf_counter()
            batch = self.scheduler.schedule()
            self._counters["ticks"] += 1
            if batch.items:
                try:
                    self._fault_point()
                    shape = TickShape.of(
                        (i.proc.num_computed_tokens, i.num_new_tokens) for i in batch.items
                    )
                    outputs.extend(self._run_batch(batch))
                    if self.scheduler.tick_cost is not None:
                        self.scheduler.tick_cost.observe(shape, time.perf_counter() - start_s)
                except Exception as exc:
                    # Only this batch's processes fail; the waiting ones and the pool are intact.
                    error = f"{type(exc).__name__}: {exc}"
                    logger.exception("tick of %s failed; failing its batch", self.model_name)
                    outputs.extend(self._fail_batch(batch, error))
                    raise TickFailed(error, outputs) from exc
            return outputs

    def _run_batch(self, batch: Batch) -> list[ProcessOutput]:
        outputs: list[ProcessOutput] = []
        logits, sampled = self.runner.run(batch)
        for item in batch.items:
            proc = item.proc
            prompt_left = max(0, proc.num_prompt_tokens - proc.num_computed_tokens)
            self._counters["prompt_tokens"] += min(prompt_left, item.num_new_tokens)
            self.scheduler.on_computed(item)
            if proc.first_scheduled_s is None:
                proc.first_scheduled_s = time.time()
        if sampled:
            result = self.sampler.sample(logits, [i.proc for i in sampled])
            for item, tok, lp in zip(sampled, result.token_ids, result.logprobs, strict=True):
                outputs.append(self._append_token(item.proc, tok, lp))
        return outputs

    def _fail_batch(self, batch: Batch, error: str) -> list[ProcessOutput]:
        """End every still-live process of a failed batch with `error`, freeing its blocks."""
        failed = []
        for item in batch.items:
            proc = item.proc
            if proc.state.is_terminal or self.table.get(proc.pid) is None:
                continue  # it finished before the failure (e.g. its token was already out)
            out = ProcessOutput(proc.pid, [], "", error=error)
            failed.append(self._finish(proc, ProcessState.FAILED, out))
        self._counters["failed_ticks"] += 1
        return failed

    def _fault_point(self) -> None:
        """Test-only: the next armed fault fails (`error`) or blocks (`hang`) this tick."""
        if not self.faults:
            return
        kind, hang_s = self.faults.popleft()
        if kind == "hang":
            time.sleep(hang_s)
        else:
            raise InjectedFault("injected fault (test-only hook)")

    def _drain_inbox(self) -> list[ProcessOutput]:
        outputs: list[ProcessOutput] = []
        while self._inbox:
            op, arg = self._inbox.popleft()
            if op == "submit":
                self._trackers[arg.pid] = OutputTracker(self.tokenizer, arg.params)
                self.scheduler.add(arg)
            elif op == "kill":
                proc = self.table.get(arg)
                if proc is not None and not proc.state.is_terminal:
                    outputs.append(
                        self._finish(proc, ProcessState.KILLED, ProcessOutput(arg, [], ""))
                    )
            elif op == "renice":
                proc = self.table.get(arg[0])
                if proc is not None:
                    proc.priority = arg[1]
            elif op == "allot":
                self.scheduler.set_shares(arg[0])
                self.scheduler.set_reservations(arg[1])
        return outputs

    def _append_token(
        self, proc: Process, token_id: int, logprobs: dict[int, float] | None
    ) -> ProcessOutput:
        proc.token_ids.append(token_id)
        now = time.time()
        if proc.first_token_s is None:
            proc.first_token_s = now
            proc.first_token_mono_s = time.monotonic()
            proc.preempted_before_first_token_s = proc.preempted_s
        self._counters["generated_tokens"] += 1
        tracker = self._trackers[proc.pid]
        text, stop_state = tracker.push(proc, token_id, self.eos_token_ids, self.max_model_len)
        out = ProcessOutput(
            proc.pid, [token_id], text, logprobs=[logprobs] if logprobs is not None else None
        )
        if stop_state is not None:
            out.new_text += tracker.flush()
            return self._finish(proc, stop_state, out)
        return self._fill(proc, out)

    def _finish(self, proc: Process, state: ProcessState, out: ProcessOutput) -> ProcessOutput:
        self.scheduler.finish(proc, state)
        proc.finished_s = time.time()
        self.sampler.forget(proc.pid)
        self._trackers.pop(proc.pid, None)
        self.table.remove(proc.pid)
        self._counters["finished"] += 1
        self._counters[f"finished_{state.value}"] += 1
        if state in (ProcessState.FINISHED_STOPPED, ProcessState.FINISHED_LENGTH):
            self._learn(proc, state)
        out.finished = True
        out.finish_reason = state.finish_reason
        out.kernel_times = KernelTimes(
            proc.scheduled_mono_s,
            proc.first_token_mono_s,
            proc.preempted_s,
            proc.preempted_before_first_token_s,
        )
        return self._fill(proc, out)

    def _learn(self, proc: Process, state: ProcessState) -> None:
        """Hand a finished process's features and outcome to the predictor (killed and failed
        processes say nothing about how long they would have run)."""
        if proc.features is None:
            return
        reason = state.finish_reason
        self.predictor.record(
            HistoryRecord(
                proc.features,
                proc.num_output_tokens,
                reason.value if reason is not None else state.value,
                proc.predicted_output_tokens,
            )
        )

    @staticmethod
    def _fill(proc: Process, out: ProcessOutput) -> ProcessOutput:
        out.num_prompt_tokens = proc.num_prompt_tokens
        out.num_cached_tokens = proc.num_cached_tokens
        out.num_output_tokens = proc.num_output_tokens
        return out

    # ---- observation ---------------------------------------------------------------------
    def stats(self) -> EngineStats:
        pool = self.pool.stats()
        s = self.scheduler
        return EngineStats(
            model=self.model_name,
            kv_blocks_total=pool.num_total,
            kv_blocks_used=pool.num_used,
            kv_blocks_cached=pool.num_cached,
            kv_blocks_free=pool.num_free,
            kv_block_size=self.pool.block_size,
            swap_blocks_total=self.swap.num_slots,
            swap_blocks_used=self.swap.num_used,
            prefix_cache_hits=pool.num_hits,
            prefix_cache_misses=pool.num_misses,
            num_running=len(s.running),
            num_waiting=len(s.waiting) + sum(1 for op, _ in list(self._inbox) if op == "submit"),
            num_preempted=len(s.swapped) + sum(1 for p in s.waiting if p.num_preemptions),
            num_preemptions=s.num_preemptions,
            num_swap_outs=s.num_swap_outs,
            num_recomputes=s.num_recomputes,
            num_prompt_tokens=self._counters["prompt_tokens"],
            num_generated_tokens=self._counters["generated_tokens"],
            num_finished=self._counters["finished"],
            num_ticks=self._counters["ticks"],
            schedule_s=s.schedule_s,
            tick_s=self.tick_s,
        )
