"""Request bodies of the OpenAI-compatible API, validated strictly at the edge.

Known fields are type- and range-checked (strict JSON types: `"10"` is not an integer); unknown
fields are accepted and ignored, because clients send parameters servers have never heard of.
Responses are built as plain dicts in the route modules, matching OpenAI's wire shapes exactly.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from llmos.errors import InvalidRequest
from llmos.kernel.params import MAX_LOGPROBS

MAX_N = 16
MAX_STOP = 16
MAX_STOP_CHARS = 1024
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # OpenAI's rule for a message's `name`

TokenId = Annotated[int, Field(ge=0)]
StopString = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_CHARS)]
Stop = StopString | Annotated[list[StopString], Field(max_length=MAX_STOP)]


class _Lenient(BaseModel):
    # NaN and Infinity are not JSON; pydantic's parser would accept them as numbers.
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class StreamOptions(_Lenient):
    include_usage: bool | None = False


class TextPart(_Lenient):
    """A content part; only text parts are supported (no images or audio yet)."""

    type: Literal["text"]
    text: str


class FunctionCall(_Lenient):
    name: str
    arguments: str = Field(description="The call's arguments as a JSON text.")


class ToolCall(_Lenient):
    """A tool call an assistant made earlier in the conversation (OpenAI's shape)."""

    id: str
    type: Literal["function"]
    function: FunctionCall


Content = str | Annotated[list[TextPart], Field(min_length=1)]
Name = Annotated[
    str,
    StringConstraints(pattern=NAME_PATTERN),
    Field(description="The participant's name: 1-64 of a-z, A-Z, 0-9, _ and -."),
]


class _Message(_Lenient):
    content: Content | None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class SystemMessage(_Message):
    role: Literal["system"]
    content: Content
    name: Name | None = None


class DeveloperMessage(_Message):
    role: Literal["developer"]
    content: Content
    name: Name | None = None


class UserMessage(_Message):
    role: Literal["user"]
    content: Content
    name: Name | None = None


class AssistantMessage(_Message):
    """Content may be left out (or null) only when the message has tool_calls."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
                {"required": ["tool_calls"], "properties": {"tool_calls": {"type": "array"}}},
            ]
        }
    )
    role: Literal["assistant"]
    content: Content | None = None
    name: Name | None = None
    tool_calls: Annotated[list[ToolCall], Field(min_length=1)] | None = None


class ToolMessage(_Message):
    role: Literal["tool"]
    content: Content
    tool_call_id: str = Field(min_length=1, description="The id of the tool call answered.")


_MESSAGE_TAGS = {
    "system": "SystemMessage",
    "developer": "DeveloperMessage",
    "user": "UserMessage",
    "assistant": "AssistantMessage",
    "tool": "ToolMessage",
}


def _message_tag(value: Any) -> str:
    """Which message model validates `value`: the one for its role; a message without a known
    role goes to `_UnknownRole`, whose error names `role`."""
    if isinstance(value, _Message):
        return type(value).__name__
    if not isinstance(value, dict):
        return "UserMessage"  # fails there as "should be an object"
    role = value.get("role")
    return _MESSAGE_TAGS.get(role, "UnknownRole") if isinstance(role, str) else "UnknownRole"


class _UnknownRole(_Message):
    """Never valid: it is only reached with a role outside the five (or none)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Content | None = None


# Tagged by class name, so an error's location reads `messages.0.UserMessage.content` and
# llmos.api.errors drops the tag: `param` is `messages[0].content`.
ChatMessage = Annotated[
    Annotated[SystemMessage, Tag("SystemMessage")]
    | Annotated[DeveloperMessage, Tag("DeveloperMessage")]
    | Annotated[UserMessage, Tag("UserMessage")]
    | Annotated[AssistantMessage, Tag("AssistantMessage")]
    | Annotated[ToolMessage, Tag("ToolMessage")]
    | Annotated[_UnknownRole, Tag("UnknownRole"), SkipJsonSchema()],
    Discriminator(_message_tag),
]


def check_messages(messages: list[Any], field: str = "messages") -> None:
    """The one rule the message models cannot say with the message's index in `param`: an
    assistant message needs content or tool_calls."""
    for i, m in enumerate(messages):
        if isinstance(m, AssistantMessage) and m.content is None and not m.tool_calls:
            param = f"{field}[{i}].content"
            raise InvalidRequest(
                f"Missing required field '{param}': an assistant message needs 'content' "
                "unless it has 'tool_calls'.",
                param=param,
            )


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
    timing: bool | None = Field(
        False,
        description="llmos: add a `timing` object to the response (seconds in queue, prefill, "
        "decode and preempted, their total, cached prompt tokens, decode tokens/s).",
    )
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
        check_messages(self.messages)
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

    prompt: (
        str
        | Annotated[list[str], Field(min_length=1)]
        | Annotated[list[TokenId], Field(min_length=1)]
        | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1)]
    ) = Field(description="A string, a list of strings, token ids, or a list of token-id lists.")
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=MAX_N)


class TokenizeRequest(_Lenient):
    """POST /tokenize (vLLM's shape): a prompt, or chat messages rendered by the template."""

    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool | None = True

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise InvalidRequest("Give exactly one of 'prompt' or 'messages'.", param="prompt")
        if self.messages is not None:
            check_messages(self.messages)
        return self


class DetokenizeRequest(_Lenient):
    """POST /detokenize."""

    model: str | None = None
    tokens: list[int]
