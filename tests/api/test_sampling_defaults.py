"""Precedence of sampling fields: the request's > the model profile's > llmos's CHAT_DEFAULTS."""

from __future__ import annotations

from llmos.api.openai import serving as sv
from llmos.api.openai.schemas import ChatCompletionRequest
from llmos.api.prompts import with_profile_system
from llmos.kernel.params import CHAT_DEFAULTS

USER = [{"role": "user", "content": "hi"}]


def params(profile: dict | None = None, **fields):
    body = ChatCompletionRequest(model="m", messages=USER, **fields)
    max_tokens = body.max_completion_tokens or body.max_tokens
    return sv.sampling_params(
        body, max_tokens=max_tokens, logprobs=None, choice_idx=0, profile=profile
    )


def picked(p) -> dict:
    return {k: getattr(p, k) for k in (*CHAT_DEFAULTS, "max_tokens", "stop")}


def test_omitted_fields_get_llmos_chat_defaults_not_temperature_one():
    p = params()
    assert picked(p) == {**CHAT_DEFAULTS, "max_tokens": None, "stop": []}
    assert p.temperature < 1.0 and p.top_p < 1.0 and p.min_p > 0.0


def test_profile_fills_what_the_request_omits():
    profile = {"temperature": 0.2, "top_p": 0.9, "max_tokens": 50, "stop": ["\n\n"]}
    p = params(profile)
    assert (p.temperature, p.top_p, p.max_tokens, p.stop) == (0.2, 0.9, 50, ["\n\n"])
    assert (p.top_k, p.min_p) == (CHAT_DEFAULTS["top_k"], CHAT_DEFAULTS["min_p"])


def test_request_fields_win_over_profile_even_at_openai_default_values():
    profile = {"temperature": 0.2, "top_p": 0.9, "top_k": 5, "max_tokens": 50, "stop": ["x"]}
    p = params(profile, temperature=1.0, top_p=1.0, top_k=0, max_tokens=7, stop=[])
    assert picked(p) | {"min_p": 0} == {
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "min_p": 0,
        "repetition_penalty": CHAT_DEFAULTS["repetition_penalty"],
        "max_tokens": 7,
        "stop": [],
    }
    assert params(profile, temperature=0.0).temperature == 0.0  # 0 is set, not omitted


def test_profile_system_prompt_leads_only_chats_without_one():
    profile = {"system": "Answer in French."}
    assert with_profile_system(USER, profile)[0] == {
        "role": "system",
        "content": "Answer in French.",
    }
    own = [{"role": "system", "content": "Be brief."}, *USER]
    assert with_profile_system(own, profile) == own
    assert with_profile_system(USER, {}) == USER
