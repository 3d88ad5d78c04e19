"""The sampling knobs change what a real server generates (the kernel tests pin their exact
effect on crafted logits; these show the API passes them through to the sampler)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

SEEDS = (0, 1, 2)
POEM = [{"role": "user", "content": "Write a short poem about the sea."}]


def _chat(http: httpx.Client, **params: Any) -> str:
    body = {"model": "smollm2", "messages": POEM, "max_tokens": 16, "ignore_eos": True, **params}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["message"]["content"])


def _complete(http: httpx.Client, prompt: str, **params: Any) -> str:
    body = {"model": "smollm2", "prompt": prompt, "max_tokens": 24, "ignore_eos": True, **params}
    r = http.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["text"])


@pytest.mark.parametrize("knob", [{"top_p": 1e-6}, {"min_p": 1.0}], ids=["top_p", "min_p"])
def test_a_knob_that_keeps_only_the_top_token_makes_sampling_greedy(
    http: httpx.Client, knob: dict[str, float]
) -> None:
    greedy = _chat(http, temperature=0)
    sampled = [_chat(http, temperature=1.0, seed=s) for s in SEEDS]
    assert any(text != greedy for text in sampled)  # temperature 1 alone does wander off
    assert [_chat(http, temperature=1.0, seed=s, **knob) for s in SEEDS] == [greedy] * len(SEEDS)


def test_repetition_penalty_breaks_a_repetitive_greedy_continuation(http: httpx.Client) -> None:
    prompt = "ha ha ha ha"
    plain = _complete(http, prompt, temperature=0)
    penalised = _complete(http, prompt, temperature=0, repetition_penalty=1.5)
    assert plain.split().count("ha") >= 12, plain
    assert penalised.split().count("ha") <= 2, penalised
    mild = _complete(http, prompt, temperature=0, repetition_penalty=1.0)
    assert mild == plain  # 1.0 is "off"
