"""The swap area: slots in host memory that hold the KV blocks of preempted processes.

Bookkeeping only (the bytes live in `KVCache`'s swap tensors). Invariant: a slot is either free
or held by exactly one swapped-out process; used + free == total.
"""

from __future__ import annotations

from collections.abc import Sequence


class SwapSpace:
    def __init__(self, num_slots: int) -> None:
        self.num_slots = num_slots
        self._free: list[int] = list(range(num_slots - 1, -1, -1))
        self._is_used = [False] * num_slots

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_slots - len(self._free)

    def can_allocate(self, n: int) -> bool:
        return n <= len(self._free)

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise MemoryError(f"asked for {n} swap slots, {len(self._free)} free")
        slots = [self._free.pop() for _ in range(n)]
        for s in slots:
            self._is_used[s] = True
        return slots

    def free(self, slots: Sequence[int]) -> None:
        for s in slots:
            assert self._is_used[s], f"swap slot {s} freed twice"
            self._is_used[s] = False
            self._free.append(s)
