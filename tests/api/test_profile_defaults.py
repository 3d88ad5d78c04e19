"""Issue 12 against a real server on the default model (SmolLM2): a request that sends no sampling
fields gets the model's profile, then llmos's chat defaults, and answers sensibly; a field the
request sets is used as sent."""

from __future__ import annotations

import openai
import pytest

from llmos.kernel.params import CHAT_DEFAULTS

pytestmark = pytest.mark.slow

COLORS = (
    "red", "blue", "green", "yellow", "orange", "purple", "pink", "black", "white", "brown",
    "gray", "grey", "violet", "indigo", "cyan", "magenta",
)  # fmt: skip
SEEDS = range(10)


@pytest.fixture(scope="module")
def sdk(server_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0)


def ask(sdk: openai.OpenAI, model_id: str, question: str, **fields: object) -> str:
    r = sdk.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": question}],
        **fields,  # type: ignore[arg-type]
    )
    return r.choices[0].message.content or ""


def num_colors(text: str) -> int:
    words = {w.strip(".,;:!*-()\"'").lower() for w in text.split()}
    return sum(c in words for c in COLORS)


def test_first_chat_without_sampling_fields_makes_sense(sdk, model_id) -> None:
    colors = [num_colors(ask(sdk, model_id, "Name three colors.", seed=s)) for s in SEEDS]
    tokyo = ["Tokyo" in ask(sdk, model_id, "What is the capital of Japan?", seed=s) for s in SEEDS]
    assert sum(n >= 2 for n in colors) >= 8, colors
    assert sum(tokyo) >= 9, tokyo


@pytest.fixture(scope="module")
def effective(http, model_id) -> dict[str, object]:
    """What an omitted field gets on the default model: its profile's value, else llmos's."""
    profile = http.get(f"/os/models/{model_id}").json()["profile"]
    assert profile == {"temperature": 0.2, "top_p": 0.9}  # SmolLM2's model card
    return CHAT_DEFAULTS | profile


def ask_with(sdk, model_id, q, fields: dict[str, object], **kw: object) -> str:
    """`fields` sent explicitly (the extensions through extra_body, as the SDK needs)."""
    std = {k: v for k, v in fields.items() if k in ("temperature", "top_p")}
    extra = {k: v for k, v in fields.items() if k not in std}
    return ask(sdk, model_id, q, **std, extra_body=extra, **kw)


def test_omitted_fields_take_the_profile_then_llmos_defaults(sdk, model_id, effective) -> None:
    q, n = "Tell me a fact about cats.", {"max_tokens": 24}
    omitted = [ask(sdk, model_id, q, seed=s, **n) for s in range(3)]
    assert omitted == [ask_with(sdk, model_id, q, effective, seed=s, **n) for s in range(3)]
    # ... and not what llmos's defaults alone (the profile ignored) would give.
    assert omitted != [ask_with(sdk, model_id, q, CHAT_DEFAULTS, seed=s, **n) for s in range(3)]


def test_an_explicit_temperature_is_used_as_sent(sdk, model_id, effective) -> None:
    q, n = "Write a short poem about the sea.", {"max_tokens": 24}
    hot = [ask(sdk, model_id, q, temperature=1.0, seed=s, **n) for s in range(3)]
    # The fields left out take the profile's / llmos's values; the temperature sent stays 1.0 ...
    same = effective | {"temperature": 1.0}
    assert hot == [ask_with(sdk, model_id, q, same, seed=s, **n) for s in range(3)]
    # ... so it samples differently from the profile's temperature on the same seeds.
    assert hot != [ask_with(sdk, model_id, q, effective, seed=s, **n) for s in range(3)]
