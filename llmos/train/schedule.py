"""Learning-rate schedules: linear warmup, then cosine or linear decay to zero, or constant.

The factors are those transformers' `get_{cosine,linear,constant}_schedule_with_warmup` give, so
a run compares step for step with an HF Trainer run (tests/train/test_peft_golden.py).
"""

from __future__ import annotations

import math
from typing import Literal

Schedule = Literal["cosine", "linear", "constant"]
SCHEDULES: tuple[Schedule, ...] = ("cosine", "linear", "constant")


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, schedule: Schedule) -> float:
    """The multiplier of the peak learning rate at optimizer step `step` (0-based)."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
