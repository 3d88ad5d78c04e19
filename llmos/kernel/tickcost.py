"""Stall-free ticks: what a tick costs, learned from the engine's own ticks, and how much prefill
a tick may carry so that decoding processes keep flowing (Sarathi-Serve, OSDI 24).

The cost of a tick is fitted online as time = a + b*decode tokens + c*prefill tokens +
e*attended keys (one query row attends to every key before it, so long contexts cost more) by
exponentially weighted least squares with non-negative coefficients. Each tick that carries
decoding processes gets a time target; its prefill share is what fits in the target after the
decodes. Invariants: the allowance never grants more than the tokens asked for; the first
prefill chunk of a tick always gets at least `min_prefill_tokens` (when it wants that many), so a
prompt is never starved; an unready model (too few ticks seen) grants everything asked.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

# Fixed feature scales so the coefficients are of one magnitude (the fit is better conditioned).
DECODE_SCALE = 16.0
PREFILL_SCALE = 256.0
ATTENDED_SCALE = 65536.0
NUM_FEATURES = 4
OUTLIER_RATIO = 3.0  # a tick slower than this x its prediction counts as this x (a stall, a GC)
# A weak prior, worth PRIOR_TICKS ticks and never decayed: a decode token costs what a prefill
# token costs. Until ticks with many different decode counts have been seen, the split of a
# tick's time between its intercept and its decodes is a guess; one noisy tick with two decoders
# would otherwise set the cost of sixteen. Leaning on the prefill cost errs low (a decode row
# costs more: logits, sampling), so early prefill chunks come out smaller, not larger.
PRIOR_TICKS = 4.0
SAME_PER_TOKEN = np.array([0.0, 1.0, -DECODE_SCALE / PREFILL_SCALE, 0.0])


def num_attended(start: int, num_tokens: int) -> int:
    """(query, key) pairs of a chunk of `num_tokens` rows at positions start..: row i sees i+1."""
    return num_tokens * start + num_tokens * (num_tokens + 1) // 2


@dataclass(frozen=True, slots=True)
class TickShape:
    """What a tick computes, as the cost model sees it."""

    num_decode_tokens: int = 0
    num_prefill_tokens: int = 0
    num_attended: int = 0

    @staticmethod
    def of(chunks: Iterable[tuple[int, int]]) -> TickShape:
        """The shape of a tick computing `(start position, num tokens)` per process; a one-token
        chunk is a decode step."""
        decode = prefill = attended = 0
        for start, n in chunks:
            if n == 1:
                decode += 1
            else:
                prefill += n
            attended += num_attended(start, n)
        return TickShape(decode, prefill, attended)

    @staticmethod
    def decode(contexts: Iterable[int]) -> TickShape:
        """A decode-only tick; `contexts` are the processes' token counts (the new one included)."""
        ctxs = list(contexts)
        return TickShape(len(ctxs), 0, sum(ctxs))

    def features(self) -> np.ndarray:
        return np.array(
            [
                1.0,
                self.num_decode_tokens / DECODE_SCALE,
                self.num_prefill_tokens / PREFILL_SCALE,
                self.num_attended / ATTENDED_SCALE,
            ]
        )


class TickCostModel:
    """tick seconds ~ theta . features(shape), fitted over the recent ticks.

    Sufficient statistics decay by half every `half_life_ticks` ticks, so the fit follows the
    machine (another tenant, a hotter cache) without being thrown by one slow tick.
    """

    def __init__(self, half_life_ticks: float = 200.0, min_ticks: int = 4) -> None:
        self.decay = 0.5 ** (1.0 / half_life_ticks)
        self.min_ticks = min_ticks
        self.gram = np.zeros((NUM_FEATURES, NUM_FEATURES))
        self.moment = np.zeros(NUM_FEATURES)
        self.theta = np.zeros(NUM_FEATURES)
        self.num_ticks = 0
        self.num_decode_ticks = 0  # ticks that carried decodes / prefill: both are needed to
        self.num_prefill_ticks = 0  # tell a decode token's cost from a prefill token's

    @property
    def is_ready(self) -> bool:
        return (
            self.num_ticks >= self.min_ticks
            and self.num_decode_ticks >= 1
            and self.num_prefill_ticks >= 1
        )

    def observe(self, shape: TickShape, seconds: float) -> None:
        """Learn from one measured tick."""
        if seconds <= 0 or not math.isfinite(seconds):
            return
        x = shape.features()
        if self.is_ready:
            seconds = min(seconds, OUTLIER_RATIO * max(float(x @ self.theta), 1e-6))
        self.gram = self.decay * self.gram + np.outer(x, x)
        self.moment = self.decay * self.moment + seconds * x
        self.num_ticks += 1
        self.num_decode_ticks += shape.num_decode_tokens > 0
        self.num_prefill_ticks += shape.num_prefill_tokens > 0
        self.theta = self._solve()

    def _solve(self) -> np.ndarray:
        """Non-negative least squares on 4 unknowns, with the prior: solve, drop the features whose
        coefficient came out negative, solve again on the rest (a tiny active-set loop). A faint
        ridge toward the previous fit keeps features no tick has exercised yet where they were."""
        ridge = 1e-6 * max(float(np.trace(self.gram)), 1.0)
        gram = self.gram + ridge * np.eye(NUM_FEATURES)
        gram += PRIOR_TICKS * np.outer(SAME_PER_TOKEN, SAME_PER_TOKEN)
        moment = self.moment + ridge * self.theta
        active = np.ones(NUM_FEATURES, dtype=bool)
        theta = np.zeros(NUM_FEATURES)
        while active.any():
            theta = np.zeros(NUM_FEATURES)
            theta[active] = np.linalg.solve(gram[np.ix_(active, active)], moment[active])
            if (theta >= 0).all():
                break
            active &= theta > 0
        return np.maximum(theta, 0.0)

    def predict_s(self, shape: TickShape) -> float:
        return float(shape.features() @ self.theta)

    def prefill_s(self, start: int, num_tokens: int) -> float:
        """Seconds a prefill chunk adds to a tick (the intercept is the tick's, not the chunk's)."""
        _, _, per_token, per_attended = self.theta
        return float(
            per_token * num_tokens / PREFILL_SCALE
            + per_attended * num_attended(start, num_tokens) / ATTENDED_SCALE
        )


class PrefillAllowance:
    """One tick's prefill share, in seconds; each chunk the scheduler places takes from it."""

    def __init__(self, model: TickCostModel, seconds: float, min_tokens: int) -> None:
        self.model = model
        self.seconds_left = seconds
        self.min_tokens = min_tokens
        self.num_granted = 0

    def take(self, start: int, want: int) -> int:
        """How many of `want` prompt tokens from position `start` this tick may compute (0 = none;
        the first chunk of the tick gets at least `min_tokens`)."""
        lo, hi = 0, want  # the largest n with prefill_s(start, n) <= seconds_left
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.model.prefill_s(start, mid) <= self.seconds_left:
                lo = mid
            else:
                hi = mid - 1
        n = lo
        if self.num_granted == 0:
            n = max(n, min(want, self.min_tokens))
        self.seconds_left -= self.model.prefill_s(start, n)
        self.num_granted += n
        return n


class TickCost:
    """Turns a target time between tokens into each tick's prefill allowance.

    The target is `target_ms`, or (auto) `target_factor` x the predicted cost of a decode-only
    tick at the batch the engine is heading for (the running and queued processes, up to
    `max_num_seqs`), so a tick with prefill costs at most that many ordinary decode ticks.
    """

    def __init__(
        self,
        *,
        target_ms: float | None = None,
        target_factor: float = 2.5,
        min_prefill_tokens: int = 16,
        model: TickCostModel | None = None,
    ) -> None:
        self.model = model or TickCostModel()
        self.target_ms = target_ms
        self.target_factor = target_factor
        self.min_prefill_tokens = min_prefill_tokens

    def observe(self, shape: TickShape, seconds: float) -> None:
        self.model.observe(shape, seconds)

    def target_s(self, decode_contexts: list[int], num_steady: int) -> float:
        """The target tick time for these decoders, heading for `num_steady` processes."""
        if self.target_ms is not None:
            return self.target_ms / 1000
        mean_ctx = sum(decode_contexts) / max(len(decode_contexts), 1)
        n = max(num_steady, len(decode_contexts))
        steady = TickShape(n, 0, round(n * mean_ctx))
        return self.target_factor * self.model.predict_s(steady)

    def allowance(self, decode_contexts: list[int], num_steady: int) -> PrefillAllowance | None:
        """This tick's prefill allowance; None = no limit (nothing decodes, or nothing learned)."""
        if not decode_contexts or not self.model.is_ready:
            return None
        decode_s = self.model.predict_s(TickShape.decode(decode_contexts))
        left_s = max(0.0, self.target_s(decode_contexts, num_steady) - decode_s)
        return PrefillAllowance(self.model, left_s, self.min_prefill_tokens)
