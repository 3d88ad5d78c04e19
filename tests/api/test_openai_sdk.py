"""Acceptance 1: the official openai SDK, unmodified, against a real `llmos serve`."""

from __future__ import annotations

import openai
import pytest

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def sdk(server_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0)


def test_models_list_and_get(sdk: openai.OpenAI, model_id: str) -> None:
    models = sdk.models.list()
    assert [m.id for m in models.data] == [model_id]
    assert sdk.models.retrieve(model_id).id == model_id
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("no-such-model")


def test_chat_non_stream_shape(sdk: openai.OpenAI, model_id: str) -> None:
    r = sdk.chat.completions.create(model=model_id, messages=MESSAGES, max_tokens=12, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.model == model_id and r.system_fingerprint
    (choice,) = r.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.message.content and choice.finish_reason in ("stop", "length")
    assert r.usage is not None
    assert r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details is not None
    assert r.usage.prompt_tokens_details.cached_tokens is not None


def test_stream_equals_non_stream_and_usage_chunk(sdk: openai.OpenAI, model_id: str) -> None:
    kwargs = {"model": model_id, "messages": MESSAGES, "max_tokens": 16, "temperature": 0}
    full = sdk.chat.completions.create(**kwargs)
    chunks = list(
        sdk.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    )
    ids = {c.id for c in chunks}
    assert len(ids) == 1 and len({c.created for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == [full.choices[0].finish_reason]
    *body, last = chunks
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None for c in body)
    assert last.usage.completion_tokens == full.usage.completion_tokens  # type: ignore[union-attr]


def test_seed_determinism_at_temperature_zero(sdk: openai.OpenAI, model_id: str) -> None:
    kwargs = {
        "model": model_id,
        "messages": MESSAGES,
        "max_tokens": 12,
        "temperature": 0,
        "seed": 7,
    }
    a = sdk.chat.completions.create(**kwargs).choices[0].message.content
    b = sdk.chat.completions.create(**kwargs).choices[0].message.content
    assert a == b and a


def test_seeded_sampling_repeats(sdk: openai.OpenAI, model_id: str) -> None:
    kwargs = {
        "model": model_id,
        "messages": MESSAGES,
        "max_tokens": 12,
        "temperature": 1.0,
        "seed": 1234,
    }
    a = sdk.chat.completions.create(**kwargs).choices[0].message.content
    b = sdk.chat.completions.create(**kwargs).choices[0].message.content
    assert a == b


def test_stop_string_ends_the_answer(sdk: openai.OpenAI, model_id: str) -> None:
    kwargs = {"model": model_id, "messages": MESSAGES, "max_tokens": 24, "temperature": 0}
    free = sdk.chat.completions.create(**kwargs).choices[0].message.content or ""
    words = free.split()
    assert len(words) >= 3, free
    stop = " " + words[2]
    cut = sdk.chat.completions.create(**kwargs, stop=[stop]).choices[0]
    assert cut.finish_reason == "stop"
    assert stop not in (cut.message.content or "")
    assert free.startswith(cut.message.content or "")


def test_logprobs(sdk: openai.OpenAI, model_id: str) -> None:
    r = sdk.chat.completions.create(
        model=model_id,
        messages=MESSAGES,
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    choice = r.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    assert len(choice.logprobs.content) == r.usage.completion_tokens  # type: ignore[union-attr]
    for entry in choice.logprobs.content:
        assert entry.logprob <= 0.0 and entry.bytes is not None
        assert len(entry.top_logprobs) == 3
        # greedy: the chosen token is the most likely one
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-5)
    text = "".join(e.token for e in choice.logprobs.content)
    assert text.strip() == (choice.message.content or "").strip()


def test_n_choices(sdk: openai.OpenAI, model_id: str) -> None:
    r = sdk.chat.completions.create(
        model=model_id, messages=MESSAGES, max_tokens=4, n=2, temperature=1.0, seed=3
    )
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert r.usage is not None and 2 <= r.usage.completion_tokens <= 8


def test_completions_text_ids_and_stream(sdk: openai.OpenAI, model_id: str) -> None:
    prompt = "The capital of France is"
    r = sdk.completions.create(model=model_id, prompt=prompt, max_tokens=8, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text
    assert r.usage is not None and r.usage.completion_tokens <= 8
    chunks = list(
        sdk.completions.create(
            model=model_id,
            prompt=prompt,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == r.usage.prompt_tokens
    # token-id prompt and a list of prompts
    ids = [1, 504, 3575, 282, 4649, 314]
    by_ids = sdk.completions.create(model=model_id, prompt=ids, max_tokens=4, temperature=0)
    assert by_ids.usage is not None and by_ids.usage.prompt_tokens == len(ids)
    two = sdk.completions.create(
        model=model_id, prompt=[prompt, "One, two,"], max_tokens=4, temperature=0
    )
    assert sorted(c.index for c in two.choices) == [0, 1]


def test_completion_logprobs(sdk: openai.OpenAI, model_id: str) -> None:
    r = sdk.completions.create(
        model=model_id, prompt="1, 2, 3,", max_tokens=4, temperature=0, logprobs=2
    )
    lp = r.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs)
    for token, top in zip(lp.tokens, lp.top_logprobs, strict=True):
        assert token in top and len(top) >= 1
    assert "".join(lp.tokens) == r.choices[0].text


def test_extensions_accepted(sdk: openai.OpenAI, model_id: str) -> None:
    r = sdk.chat.completions.create(
        model=model_id,
        messages=MESSAGES,
        max_tokens=4,
        temperature=0.7,
        top_p=0.9,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        logit_bias={"42": -100},
        extra_body={
            "priority": "interactive",
            "top_k": 20,
            "min_p": 0.05,
            "repetition_penalty": 1.1,
            "ignore_eos": True,
            "future_param": {"x": 1},
        },
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 4
