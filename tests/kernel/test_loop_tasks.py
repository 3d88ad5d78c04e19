"""The driver ticks anything with (name, has_work, step) on its one compute thread: batch work such
as a fine-tuning job shares the thread with the engines, and a failing task leaves alone."""

from __future__ import annotations

import threading

from llmos.kernel.loop import EngineLoop, Tickable
from llmos.kernel.outputs import ProcessOutput


class CountingJob:
    """A task with `total` bounded steps; it records the thread each step ran on."""

    def __init__(self, name: str, total: int, fail_at: int | None = None) -> None:
        self.name = name
        self.total = total
        self.fail_at = fail_at
        self.done = 0
        self.threads: set[str] = set()
        self.finished = threading.Event()

    def has_work(self) -> bool:
        return self.done < self.total

    def step(self) -> list[ProcessOutput]:
        self.threads.add(threading.current_thread().name)
        if self.done == self.fail_at:
            raise RuntimeError("job step failed")
        self.done += 1
        if self.done == self.total:
            self.finished.set()
        return []


def test_tasks_share_the_driver_thread_and_a_failed_one_is_removed() -> None:
    loop = EngineLoop(max_running=4, max_waiting=4)
    good, bad = CountingJob("good", total=50), CountingJob("bad", total=50, fail_at=3)
    jobs: list[Tickable] = [good, bad]
    loop.start()
    try:
        for job in jobs:
            loop.add_task(job)
        assert good.finished.wait(30)
        assert good.done == 50 and good.threads == {"llmos-engine"}
        assert bad.done == 3  # it failed on its 4th step and was taken out of the loop
        assert loop.remove_task("bad") is None
        assert loop.remove_task("good") is good
        assert loop.is_alive and loop.dead_reason is None  # the kernel lives on
    finally:
        loop.stop()
