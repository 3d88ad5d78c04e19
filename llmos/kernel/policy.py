"""Queue policies: the order in which the scheduler serves processes, behind one interface.

A policy maps a process to a sort key; smaller keys run first and are preempted last.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from llmos.kernel.process import Process


class SchedulingPolicy(Protocol):
    def __call__(self, proc: Process) -> tuple[int, ...]: ...


def fcfs(proc: Process) -> tuple[int, ...]:
    """First come, first served; priority classes ignored."""
    return (proc.seq_no,)


def priority(proc: Process) -> tuple[int, ...]:
    """Priority classes (interactive > normal > batch), first come first served within one."""
    return (int(proc.priority), proc.seq_no)


POLICIES: dict[str, Callable[[Process], tuple[int, ...]]] = {
    "fcfs": fcfs,
    "priority": priority,
}
