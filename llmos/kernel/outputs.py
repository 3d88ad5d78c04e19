"""Plain data the engine hands out each tick: per-process output deltas and kernel stats."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class FinishReason(StrEnum):
    """Why a process ended: the one vocabulary of the kernel, the API, metrics and the CLI."""

    STOP = "stop"  # an end-of-sequence token or a stop string
    LENGTH = "length"  # max_tokens or the context is full
    KILLED = "killed"  # `kill`, a disconnect, a frozen client, shutdown
    ERROR = "error"  # the kernel failed it (a failed tick, a stall, an engine rebuilt)

    @property
    def is_failure(self) -> bool:
        """Whether the client gets an error instead of a result."""
        return self in (FinishReason.KILLED, FinishReason.ERROR)


@dataclass(frozen=True, slots=True)
class KernelTimes:
    """A process's life inside the kernel, monotonic seconds (None: it never got that far)."""

    scheduled_s: float | None
    first_token_s: float | None
    preempted_s: float
    preempted_before_first_token_s: float


@dataclass(frozen=True, slots=True)
class RequestTiming:
    """Where a request's time went, in seconds: the parts add up to `total_s`, the time from
    the server receiving the request to its last token.

    queue: received -> first scheduled; prefill: -> first token; decode: -> last token (each
    without the time preempted, which is `preempted_s`)."""

    queue_s: float
    prefill_s: float
    decode_s: float
    preempted_s: float
    total_s: float
    cached_prompt_tokens: int
    output_tokens: int

    @property
    def tokens_per_s(self) -> float:
        """Output tokens per second of decoding (0 when nothing was decoded)."""
        return self.output_tokens / self.decode_s if self.decode_s > 0 else 0.0

    @classmethod
    def of(
        cls, arrival_s: float, finished_s: float, k: KernelTimes, out: ProcessOutput
    ) -> RequestTiming:
        scheduled = finished_s if k.scheduled_s is None else k.scheduled_s
        first = finished_s if k.first_token_s is None else k.first_token_s
        preempted_early = k.preempted_before_first_token_s
        return cls(
            queue_s=max(0.0, scheduled - arrival_s),
            prefill_s=max(0.0, first - scheduled - preempted_early),
            decode_s=max(0.0, finished_s - first - (k.preempted_s - preempted_early)),
            preempted_s=k.preempted_s,
            total_s=max(0.0, finished_s - arrival_s),
            cached_prompt_tokens=out.num_cached_tokens,
            output_tokens=out.num_output_tokens,
        )

    def as_dict(self) -> dict[str, float | int]:
        return {
            "queue_s": round(self.queue_s, 6),
            "prefill_s": round(self.prefill_s, 6),
            "decode_s": round(self.decode_s, 6),
            "preempted_s": round(self.preempted_s, 6),
            "total_s": round(self.total_s, 6),
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "output_tokens": self.output_tokens,
            "tokens_per_s": round(self.tokens_per_s, 3),
        }


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
    finish_reason: FinishReason | None = None
    logprobs: list[dict[int, float]] | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_output_tokens: int = 0
    error: str | None = None
    kernel_times: KernelTimes | None = None  # on the finished output: what the kernel saw
    timing: RequestTiming | None = None  # on the finished output: added by the driver


class TickFailed(Exception):
    """Raised by a tick whose batch failed: the engine already ended those processes (their
    finished outputs are `outputs`, with `FinishReason.ERROR`) and can keep ticking."""

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
    schedule_s: float = 0.0  # time the scheduler took deciding ticks, since start
    tick_s: float = 0.0  # time the ticks took in all, since start
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def schedule_share(self) -> float:
        """The share of tick time spent scheduling (the policy's per-tick cost)."""
        return self.schedule_s / self.tick_s if self.tick_s > 0 else 0.0

    @property
    def prefix_cache_hit_rate(self) -> float:
        total = self.prefix_cache_hits + self.prefix_cache_misses
        return self.prefix_cache_hits / total if total else 0.0
