"""What the OpenAI-compatible routes answer, as models for the OpenAPI document.

The routes build their answers as plain dicts (fast, exactly OpenAI's wire shapes); these models
only describe them, and the schema-driven fuzz test (tests/api/test_fuzz.py) checks every answer
against them. Fields are all required, because the routes always send them (null where empty).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

FinishReason = Literal["stop", "length"]
SSE_STREAM = {
    "text/event-stream": {
        "schema": {
            "type": "string",
            "description": "With `stream: true`: `data: {chunk JSON}` events (`object` "
            "`chat.completion.chunk` or `text_completion`), an `error` event if the process "
            "was killed or failed, then `data: [DONE]`.",
        }
    }
}


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(description="Prompt tokens served from the prefix cache.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    """POST /v1/chat/completions without `stream`."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: FinishReason


class Completion(BaseModel):
    """POST /v1/completions without `stream`."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    max_model_len: int = Field(description="Longest prompt + output this server allows.")
    aliases: list[str]
    resident: bool = Field(description="Loaded now (others load on their first request).")
    defaults: dict[str, Any] = Field(
        description="What a request that omits a sampling field gets (llmos extension)."
    )
    defaults_source: dict[str, Literal["model", "llmos"]] = Field(
        description="Where each default comes from: the model's profile, or llmos's own."
    )
    system_prompt: str | None = Field(
        description="The system prompt a chat without one gets (the model's profile)."
    )


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: None


class DetokenizeResponse(BaseModel):
    prompt: str


class TokenizerInfo(BaseModel):
    tokenizer_class: str
    model: str
    vocab_size: int
    model_max_length: int
    bos_token: str | None
    bos_token_id: int | None
    eos_token: str | None
    eos_token_ids: list[int]
    chat_template: str | None
