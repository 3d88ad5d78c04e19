"""Plain data the engine hands out each tick: per-process output deltas and kernel stats."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class ProcessOutput:
    """What one process produced in one tick (a delta), plus its totals so far.

    `logprobs`, when requested, has one {token_id: logprob} dict per new token holding the chosen
    token and the top-k alternatives.
    """

    pid: int
    new_token_ids: list[int]
    new_text: str
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "killed" | "error"
    logprobs: list[dict[int, float]] | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_output_tokens: int = 0
    error: str | None = None


class TickFailed(Exception):
    """Raised by a tick whose batch failed: the engine already ended those processes (their
    finished outputs are `outputs`, with `finish_reason="error"`) and can keep ticking."""

    def __init__(self, error: str, outputs: list[ProcessOutput]) -> None:
        super().__init__(error)
        self.error = error
        self.outputs = outputs


@dataclass(slots=True)
class EngineStats:
    """A snapshot of the kernel: memory, queues, counters since start."""

    model: str = ""
    kv_blocks_total: int = 0
    kv_blocks_used: int = 0
    kv_blocks_cached: int = 0
    kv_blocks_free: int = 0
    kv_block_size: int = 0
    swap_blocks_total: int = 0
    swap_blocks_used: int = 0
    prefix_cache_hits: int = 0  # blocks found in the prefix cache
    prefix_cache_misses: int = 0
    num_running: int = 0
    num_waiting: int = 0
    num_preempted: int = 0
    num_preemptions: int = 0
    num_swap_outs: int = 0
    num_recomputes: int = 0
    num_prompt_tokens: int = 0  # prompt tokens computed (not cached)
    num_generated_tokens: int = 0
    num_finished: int = 0
    num_ticks: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def prefix_cache_hit_rate(self) -> float:
        total = self.prefix_cache_hits + self.prefix_cache_misses
        return self.prefix_cache_hits / total if total else 0.0
