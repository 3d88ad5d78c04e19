"""Processes and the process table: one generation request is one Process with a pid.

Invariants: pids are unique and never reused within a table; a process in a terminal state never
runs again; `num_computed_tokens <= len(token_ids)`.
"""

from __future__ import annotations

import enum
import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from llmos.kernel.outputs import FinishReason
from llmos.kernel.params import SamplingParams
from llmos.kernel.predict import PromptFeatures


class Priority(enum.IntEnum):
    """Priority classes; lower value runs first."""

    INTERACTIVE = 0
    NORMAL = 1
    BATCH = 2

    @classmethod
    def parse(cls, value: str | int | Priority) -> Priority:
        from llmos.errors import InvalidRequest

        if isinstance(value, Priority):
            return value
        if isinstance(value, int):
            try:
                return cls(value)
            except ValueError:
                pass
        elif value.upper() in cls.__members__:
            return cls[value.upper()]
        names = ", ".join(p.name.lower() for p in cls)
        raise InvalidRequest(f"Unknown priority {value!r}; use one of: {names}.", param="priority")


class ProcessState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "finished_stop"
    FINISHED_LENGTH = "finished_length"
    KILLED = "killed"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def finish_reason(self) -> FinishReason | None:
        return _FINISH_REASON.get(self)


_TERMINAL = {
    ProcessState.FINISHED_STOPPED,
    ProcessState.FINISHED_LENGTH,
    ProcessState.KILLED,
    ProcessState.FAILED,
}
_FINISH_REASON = {
    ProcessState.FINISHED_STOPPED: FinishReason.STOP,
    ProcessState.FINISHED_LENGTH: FinishReason.LENGTH,
    ProcessState.KILLED: FinishReason.KILLED,
    ProcessState.FAILED: FinishReason.ERROR,
}


@dataclass(slots=True, eq=False)
class Process:
    """One generation request as the kernel sees it."""

    pid: int
    prompt_token_ids: list[int]
    params: SamplingParams
    owner: str = "local"
    cache_namespace: bytes = b""  # seeds its block hash chain (memory.cache_namespace); b"": global
    model: str = ""
    priority: Priority = Priority.NORMAL
    state: ProcessState = ProcessState.WAITING
    token_ids: list[int] = field(default_factory=list)  # prompt + output
    num_computed_tokens: int = 0  # tokens whose KV is in the cache
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache at first admission
    block_table: list[int] = field(default_factory=list)
    arrival_s: float = field(default_factory=time.time)
    first_scheduled_s: float | None = None
    first_token_s: float | None = None
    finished_s: float | None = None
    num_preemptions: int = 0
    # Monotonic clock, for a request's timing breakdown (kernel.outputs.RequestTiming).
    scheduled_mono_s: float | None = None  # first put into a batch
    first_token_mono_s: float | None = None
    preempted_since_s: float | None = None  # while preempted
    preempted_s: float = 0.0  # total time preempted so far
    preempted_before_first_token_s: float = 0.0
    is_swapped: bool = False  # its KV lives in the swap area, not the pool
    seq_no: int = 0  # admission order (FCFS tie-break), set by the scheduler
    features: PromptFeatures | None = None  # what the length predictor saw (kernel.predict)
    predicted_output_tokens: float | None = None  # None: no model yet (cold start)
    # Why it did not run at the last tick it was passed over (the scheduler's words: "memory",
    # "slots", "token-budget", "reserved", "preempted", or the policy layer ahead of it).
    wait_reason: str | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.prompt_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_token_ids) :]

    @property
    def is_prefilling(self) -> bool:
        return self.num_computed_tokens < self.num_tokens - 1


@dataclass(slots=True, frozen=True)
class ProcessInfo:
    """A read-only snapshot of one process-table row (for `ps`, the API, the console)."""

    pid: int
    owner: str
    model: str
    priority: str
    state: str
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int
    num_preemptions: int
    arrival_s: float
    first_token_s: float | None
    finished_s: float | None
    wait_reason: str | None  # why it is not running (None while running or before its first tick)
    is_swapped: bool  # preempted with its KV in the swap area

    @classmethod
    def of(cls, p: Process) -> ProcessInfo:
        return cls(
            pid=p.pid,
            owner=p.owner,
            model=p.model,
            priority=p.priority.name.lower(),
            state=p.state.value,
            num_prompt_tokens=p.num_prompt_tokens,
            num_output_tokens=p.num_output_tokens,
            num_cached_tokens=p.num_cached_tokens,
            num_preemptions=p.num_preemptions,
            arrival_s=p.arrival_s,
            first_token_s=p.first_token_s,
            finished_s=p.finished_s,
            wait_reason=None if p.state is ProcessState.RUNNING else p.wait_reason,
            is_swapped=p.is_swapped,
        )


class ProcessTable:
    """Every live process by pid. Thread-safe for readers on other threads (snapshots).

    Tables of engines serving side by side share one `pids` counter, so a pid names one process
    across all of them (`kill PID` finds its engine).
    """

    def __init__(self, pids: Iterator[int] | None = None) -> None:
        self._procs: dict[int, Process] = {}
        self._next_pid = pids if pids is not None else itertools.count(1)
        self._lock = threading.Lock()

    def new_pid(self) -> int:
        return next(self._next_pid)

    def add(self, proc: Process) -> None:
        with self._lock:
            assert proc.pid not in self._procs, f"pid {proc.pid} reused"
            self._procs[proc.pid] = proc

    def get(self, pid: int) -> Process | None:
        return self._procs.get(pid)

    def remove(self, pid: int) -> None:
        with self._lock:
            self._procs.pop(pid, None)

    def snapshot(self) -> list[ProcessInfo]:
        with self._lock:
            procs = list(self._procs.values())
        return [ProcessInfo.of(p) for p in sorted(procs, key=lambda p: p.pid)]

    def __len__(self) -> int:
        return len(self._procs)
