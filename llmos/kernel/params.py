"""SamplingParams: the per-process knobs a client may set, checked once at the edge.

A plain dataclass (not pydantic): it rides on every Process through the tick.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llmos.errors import InvalidRequest

MAX_LOGPROBS = 20
MAX_CACHE_SALT_CHARS = 256

# What a chat gets for a field neither the request nor the model's profile sets: llama.cpp's
# defaults, because temperature 1.0 unfiltered makes small models ramble (issue 12; measured on
# SmolLM2 in docs/api.md#sampling-defaults). SamplingParams' own defaults stay plain (1.0, off)
# for code that builds one directly.
CHAT_DEFAULTS: dict[str, Any] = {
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.95,
    "min_p": 0.05,
    "repetition_penalty": 1.0,
}
DEFAULTED_FIELDS = (*CHAT_DEFAULTS, "max_tokens", "stop")


def with_defaults(request: Mapping[str, Any], profile: Mapping[str, Any] | None) -> dict[str, Any]:
    """Each of DEFAULTED_FIELDS by precedence: the request's value (None: omitted) > the model
    profile's > CHAT_DEFAULTS (absent there: left out, SamplingParams' default)."""
    out: dict[str, Any] = {}
    for name in DEFAULTED_FIELDS:
        for layer in (request, profile or {}, CHAT_DEFAULTS):
            if layer.get(name) is not None:
                out[name] = layer[name]
                break
    return out


def defaults_in_use(profile: Mapping[str, Any] | None) -> dict[str, tuple[Any, str]]:
    """What a request that sets nothing gets: field -> (value, "model" or "llmos")."""
    out: dict[str, tuple[Any, str]] = {}
    for name in DEFAULTED_FIELDS:
        for layer, source in ((profile or {}, "model"), (CHAT_DEFAULTS, "llmos")):
            if layer.get(name) is not None:
                out[name] = (layer[name], source)
                break
    return out


@dataclass(slots=True)
class SamplingParams:
    """How a process picks its next token and when it stops.

    `temperature == 0` is greedy. `max_tokens=None` means "until the context is full".
    `logprobs=k` returns, per generated token, a {token_id: logprob} dict holding the chosen
    token and the k most likely ones (k=0: the chosen token only).
    `cache_salt` is not about sampling but rides along with the prompt: processes sending the
    same salt share cached prefixes whoever owns them (none: the owner's own prefix cache).
    """

    max_tokens: int | None = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None
    min_tokens: int = 0
    cache_salt: str | None = None

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self, vocab_size: int | None = None) -> SamplingParams:
        """Raise InvalidRequest naming the first bad field; return self when all is well."""
        _check(self.max_tokens is None or self.max_tokens >= 1, "max_tokens", "must be >= 1")
        _check(
            _finite(self.temperature) and 0.0 <= self.temperature <= 2.0,
            "temperature",
            "must be between 0 and 2",
        )
        _check(_finite(self.top_p) and 0.0 < self.top_p <= 1.0, "top_p", "must be in (0, 1]")
        _check(self.top_k >= -1, "top_k", "must be -1, 0 (off) or a positive count")
        _check(_finite(self.min_p) and 0.0 <= self.min_p <= 1.0, "min_p", "must be in [0, 1]")
        _check(
            _finite(self.repetition_penalty) and 0.0 < self.repetition_penalty <= 10.0,
            "repetition_penalty",
            "must be in (0, 10]",
        )
        _check(
            _finite(self.presence_penalty) and -2.0 <= self.presence_penalty <= 2.0,
            "presence_penalty",
            "must be between -2 and 2",
        )
        _check(
            _finite(self.frequency_penalty) and -2.0 <= self.frequency_penalty <= 2.0,
            "frequency_penalty",
            "must be between -2 and 2",
        )
        _check(
            self.logprobs is None or 0 <= self.logprobs <= MAX_LOGPROBS,
            "logprobs",
            f"must be between 0 and {MAX_LOGPROBS}",
        )
        _check(self.min_tokens >= 0, "min_tokens", "must be >= 0")
        _check(
            self.cache_salt is None
            or (
                isinstance(self.cache_salt, str)
                and 1 <= len(self.cache_salt) <= MAX_CACHE_SALT_CHARS
            ),
            "cache_salt",
            f"must be a string of 1 to {MAX_CACHE_SALT_CHARS} characters",
        )
        _check(
            all(isinstance(s, str) and s for s in self.stop), "stop", "must be non-empty strings"
        )
        _check(len(self.stop) <= 16, "stop", "at most 16 stop strings")
        for token_id, bias in (self.logit_bias or {}).items():
            _check(
                vocab_size is None or 0 <= token_id < vocab_size,
                "logit_bias",
                f"token id {token_id} is outside the vocabulary (0..{(vocab_size or 1) - 1})",
            )
            _check(
                _finite(bias) and -100.0 <= bias <= 100.0,
                "logit_bias",
                "biases must be between -100 and 100",
            )
        for token_id in self.stop_token_ids:
            _check(
                vocab_size is None or 0 <= token_id < vocab_size,
                "stop_token_ids",
                f"token id {token_id} is outside the vocabulary",
            )
        return self


def _finite(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _check(ok: bool, param: str, what: str) -> None:
    if not ok:
        raise InvalidRequest(f"Invalid value for '{param}': {what}.", param=param)
