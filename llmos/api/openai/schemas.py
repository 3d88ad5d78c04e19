"""Request bodies of the OpenAI-compatible API, validated strictly at the edge.

Known fields are type- and range-checked (strict JSON types: `"10"` is not an integer); unknown
fields are accepted and ignored, because clients send parameters servers have never heard of.
Responses are built as plain dicts in the route modules, matching OpenAI's wire shapes exactly.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from llmos.errors import InvalidRequest
from llmos.kernel.params import MAX_LOGPROBS

MAX_N = 16
MAX_STOP = 16
MAX_STOP_CHARS = 1024

StopString = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_CHARS)]
Stop = StopString | Annotated[list[StopString], Field(max_length=MAX_STOP)]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Lenient):
    include_usage: bool | None = False


class TextPart(_Lenient):
    """A content part; only text parts are supported (no images or audio yet)."""

    type: Literal["text"]
    text: str


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class SamplingFields(_Lenient):
    """Fields shared by chat and legacy completions, including llmos/vLLM extensions."""

    model: str = Field(description="Id of a served model (see GET /v1/models).")
    n: int | None = Field(1, ge=1, le=MAX_N, description="Choices to generate.")
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate.")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: Stop | None = Field(None, description=f"Up to {MAX_STOP} stop strings.")
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = Field(None, description="Token id -> bias (-100..100).")
    user: str | None = None
    # extensions
    priority: str | int | None = Field(
        None, description="llmos priority class: interactive, normal (default) or batch."
    )
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    ignore_eos: bool | None = False
    min_tokens: int | None = Field(None, ge=0)
    stop_token_ids: list[int] | None = None
    cache_salt: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="Share cached prompt prefixes with every request sending the same salt "
        "(by default they are private to your user); keep it secret to the group sharing it.",
    )

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest(
                "'stream_options' is only allowed when 'stream' is true.", param="stream_options"
            )
        return self

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check_pairs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest(
                "'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs"
            )
        if self.tool_choice is not None and not self.tools:
            raise InvalidRequest(
                "'tool_choice' is only allowed when 'tools' are given.", param="tool_choice"
            )
        return self


class CompletionRequest(SamplingFields):
    """POST /v1/completions (legacy): the prompt may be text or token ids."""

    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="A string, a list of strings, token ids, or a list of token-id lists."
    )
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=MAX_N)


class TokenizeRequest(_Lenient):
    """POST /tokenize (vLLM's shape): a prompt, or chat messages rendered by the template."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool | None = True

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise InvalidRequest("Give exactly one of 'prompt' or 'messages'.", param="prompt")
        return self


class DetokenizeRequest(_Lenient):
    """POST /detokenize."""

    model: str | None = None
    tokens: list[int]
