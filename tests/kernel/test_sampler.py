"""The sampler's knobs on crafted logits: which tokens each knob allows and with what probability.

The sampler draws one uniform `u` per token from a generator seeded with the process's `seed` and
picks by inverse CDF, so for a known seed the expected token follows from the expected
probabilities alone. Each test below runs many seeds and asserts the sampler picks exactly the
token the hand-computed distribution gives for that seed's `u`: a knob that is ignored, or that
keeps the wrong tokens or weights them wrongly, changes some of those picks.
"""

from __future__ import annotations

import math

import pytest
import torch

from llmos.kernel.params import SamplingParams
from llmos.kernel.process import Process
from llmos.kernel.sampler import Sampler

SEEDS = range(400)
PROBS = [0.5, 0.3, 0.15, 0.05]  # most to least likely
ORDER = [2, 0, 3, 1]  # token ids for PROBS: the ranking is not the id order


def _logits(probs_by_token: dict[int, float], vocab_size: int) -> torch.Tensor:
    row = torch.full((vocab_size,), float("-inf"))
    for token_id, p in probs_by_token.items():
        row[token_id] = math.log(p)
    return row.unsqueeze(0)


def _first_uniform(seed: int) -> float:
    g = torch.Generator()
    g.manual_seed(seed)
    return float(torch.rand(1, generator=g))


def _expected(probs_by_token: dict[int, float], u: float) -> int:
    """Inverse CDF over token ids in id order (the sampler's cumsum runs over the row)."""
    total = sum(probs_by_token.values())
    acc = 0.0
    for token_id in sorted(probs_by_token):
        acc += probs_by_token[token_id] / total
        if u < acc:
            return token_id
    return max(probs_by_token)


def _draws(logits: torch.Tensor, params: dict, prompt: list[int] | None = None) -> dict[int, int]:
    """seed -> the token the sampler picks for a fresh process with that seed."""
    sampler = Sampler(vocab_size=logits.shape[1], eos_token_ids=[])
    picks = {}
    for seed in SEEDS:
        proc = Process(
            pid=seed + 1, prompt_token_ids=prompt or [7], params=SamplingParams(**params, seed=seed)
        )
        picks[seed] = sampler.sample(logits, [proc]).token_ids[0]
    return picks


def _assert_distribution(picks: dict[int, int], allowed: dict[int, float]) -> None:
    wrong = {s: (t, _expected(allowed, _first_uniform(s))) for s, t in picks.items()}
    wrong = {s: pair for s, pair in wrong.items() if pair[0] != pair[1]}
    assert not wrong, f"seed -> (picked, expected): {dict(list(wrong.items())[:5])}"
    assert set(picks.values()) == set(allowed)  # every allowed token is actually drawn


BASE = dict(zip(ORDER, PROBS, strict=True))  # {2: .5, 0: .3, 3: .15, 1: .05}


def test_plain_temperature_one_draws_from_the_softmax():
    _assert_distribution(_draws(_logits(BASE, 6), {"temperature": 1.0}), BASE)


@pytest.mark.parametrize(
    ("top_p", "allowed"),
    [
        (0.75, {2: 0.5, 0: 0.3}),  # mass before token 0 is .5 < .75, before token 3 is .8
        (0.9, {2: 0.5, 0: 0.3, 3: 0.15}),
        (0.4, {2: 0.5}),  # the most likely token is always kept
    ],
)
def test_top_p_keeps_the_nucleus_renormalized(top_p, allowed):
    picks = _draws(_logits(BASE, 6), {"temperature": 1.0, "top_p": top_p})
    _assert_distribution(picks, allowed)


@pytest.mark.parametrize(
    ("min_p", "allowed"),
    [
        (0.25, {2: 0.5, 0: 0.3, 3: 0.15}),  # threshold .125: drops only the .05 token
        (0.5, {2: 0.5, 0: 0.3}),  # threshold .25
        (1.0, {2: 0.5}),
    ],
)
def test_min_p_drops_tokens_below_a_fraction_of_the_top(min_p, allowed):
    picks = _draws(_logits(BASE, 6), {"temperature": 1.0, "min_p": min_p})
    _assert_distribution(picks, allowed)


def test_top_p_and_min_p_apply_after_temperature():
    # At temperature 2 the probabilities flatten to sqrt(p) (renormalized): .5/.3/.15/.05 become
    # ~.38/.29/.21/.12, so top_p .75 now keeps three tokens where it kept two at temperature 1.
    flat = {t: math.sqrt(p) for t, p in BASE.items()}
    total = sum(flat.values())
    flat = {t: p / total for t, p in flat.items()}
    assert flat[2] + flat[0] < 0.75 < flat[2] + flat[0] + flat[3]
    picks = _draws(_logits(BASE, 6), {"temperature": 2.0, "top_p": 0.75})
    _assert_distribution(picks, {t: flat[t] for t in (2, 0, 3)})


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    # token: logit          seen in the prompt?   after penalty 2
    #   0:  2.0              yes                    1.0
    #   1:  1.5              no                     1.5  (now the argmax)
    #   2: -1.0              no                    -1.0
    #   3: -0.5              yes                   -1.0
    #   4:  0.0              no                     0.0
    logits = torch.tensor([[2.0, 1.5, -1.0, -0.5, 0.0]])
    prompt = [0, 3, 0]
    after = torch.tensor([1.0, 1.5, -1.0, -1.0, 0.0])
    allowed = dict(enumerate(torch.softmax(after, dim=0).tolist()))
    picks = _draws(logits, {"temperature": 1.0, "repetition_penalty": 2.0}, prompt)
    _assert_distribution(picks, allowed)

    sampler = Sampler(vocab_size=5, eos_token_ids=[])
    greedy = SamplingParams(temperature=0)
    penalised = SamplingParams(temperature=0, repetition_penalty=2.0)
    assert sampler.sample(logits, [Process(1, prompt, greedy)]).token_ids == [0]
    assert sampler.sample(logits, [Process(2, prompt, penalised)]).token_ids == [1]


def test_repetition_penalty_pushes_a_seen_negative_logit_further_down():
    # Dividing a negative logit by the penalty would raise it; it must be multiplied instead.
    logits = torch.tensor([[-1.0, -1.2, -5.0]])
    sampler = Sampler(vocab_size=3, eos_token_ids=[])
    seen_0 = [0]
    params = SamplingParams(temperature=0, repetition_penalty=1.5)  # -1.0 -> -1.5 < -1.2
    assert sampler.sample(logits, [Process(1, seen_0, params)]).token_ids == [1]
    below_one = SamplingParams(temperature=0, repetition_penalty=0.5)  # rewards seen tokens
    assert sampler.sample(logits, [Process(2, [1], below_one)]).token_ids == [1]  # -1.2 -> -.6
    positive = torch.tensor([[1.0, 1.2, 0.9]])
    assert sampler.sample(positive, [Process(3, [0], below_one)]).token_ids == [0]  # 1.0 -> 2.0


def test_repetition_penalty_counts_generated_tokens_too():
    logits = torch.tensor([[3.0, 2.0, 1.0]])
    sampler = Sampler(vocab_size=3, eos_token_ids=[])
    proc = Process(1, [2], SamplingParams(temperature=0, repetition_penalty=2.0))
    proc.token_ids.append(0)  # token 0 was generated earlier: 3.0 -> 1.5 < 2.0
    assert sampler.sample(logits, [proc]).token_ids == [1]


def test_knobs_of_one_process_leave_its_neighbours_alone():
    logits = _logits(BASE, 6).repeat(2, 1)
    sampler = Sampler(vocab_size=6, eos_token_ids=[])
    for seed in range(50):
        tight = Process(1000 + seed, [7], SamplingParams(temperature=1.0, top_p=0.4, seed=seed))
        plain = Process(2000 + seed, [7], SamplingParams(temperature=1.0, seed=seed))
        got = sampler.sample(logits, [tight, plain]).token_ids
        assert got == [2, _expected(BASE, _first_uniform(seed))]
