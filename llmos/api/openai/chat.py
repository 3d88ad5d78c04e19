"""POST /v1/chat/completions: messages -> chat template -> one process per choice."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from llmos.api.auth import granted_model
from llmos.api.deps import ServerContext, body_schema, get_context, json_body
from llmos.api.openai import serving as sv
from llmos.api.openai.responses import SSE_STREAM, ChatCompletion
from llmos.api.openai.schemas import ChatCompletionRequest
from llmos.api.openapi import responses
from llmos.api.prompts import encode_chat, with_profile_system
from llmos.errors import InvalidRequest
from llmos.kernel.loop import OutputStream
from llmos.kernel.residency import ServedEngine

router = APIRouter()


@router.post(
    "/v1/chat/completions",
    openapi_extra=body_schema(ChatCompletionRequest),
    response_model=None,
    responses=responses(ChatCompletion, 404, 503, content=SSE_STREAM),
)
async def create_chat_completion(
    request: Request,
    body: ChatCompletionRequest = Depends(json_body(ChatCompletionRequest)),
    ctx: ServerContext = Depends(get_context),
) -> Response:
    """Generate a chat answer (OpenAI's shape); `stream: true` sends SSE chunks. The `model`
    may be any registry model you are granted; one not resident is loaded first."""
    arrival_s = time.monotonic()
    model = await granted_model(ctx, request, body.model)
    _refuse_unsupported(body)
    messages = [m.model_dump(exclude_none=True) | {"content": m.text()} for m in body.messages]
    max_tokens = body.max_completion_tokens or body.max_tokens
    num_logprobs = (body.top_logprobs or 0) if body.logprobs else None
    async with ctx.use_model(model) as engine:
        messages = with_profile_system(messages, engine.profile)
        num_chars = sum(len(m["content"]) for m in messages)
        sv.precheck_length(engine, num_chars)
        prompt_ids = await sv.off_loop(num_chars, encode_chat, engine, messages)
        prompts = [
            (
                prompt_ids,
                sv.sampling_params(
                    body,
                    max_tokens=max_tokens,
                    logprobs=num_logprobs,
                    choice_idx=i,
                    profile=engine.profile,
                ),
            )
            for i in range(body.n or 1)
        ]
        priority = sv.parse_priority(body.priority)
        stream = await sv.open_stream(ctx, engine, prompts, priority, arrival_s, request)
    choices = {pid: sv.Choice(index=i) for i, pid in enumerate(stream.pids)}
    reply = _Reply(engine, model, body)
    if body.stream:
        return sv.ProcessStreamResponse(
            reply.events(stream, choices),
            stream,
            send_timeout_s=ctx.settings.api.send_timeout_s,
        )
    if not await sv.collect(stream, request, choices):
        return Response(status_code=499)
    sv.raise_for_failures(choices.values())
    return JSONResponse(reply.completion(sorted(choices.values(), key=lambda c: c.index)))


def _refuse_unsupported(body: ChatCompletionRequest) -> None:
    if body.tools and body.tool_choice != "none":
        raise InvalidRequest(
            "Tool calling is not supported yet; send no 'tools' or tool_choice 'none'.",
            param="tools",
        )
    fmt = (body.response_format or {}).get("type", "text")
    if fmt != "text":
        raise InvalidRequest(
            f"response_format {fmt!r} is not supported yet; use 'text'.", param="response_format"
        )


class _Reply(sv.Reply):
    """Formats one request's choices as a completion or as chunks."""

    chunk_object = "chat.completion.chunk"

    def __init__(self, engine: ServedEngine, model: str, body: ChatCompletionRequest) -> None:
        self.id = sv.new_id("chatcmpl")
        self.created = sv.now_s()
        self.model = model
        self.body = body
        self.top = body.top_logprobs or 0
        self.token_text = sv.TokenText(engine.tokenizer)

    def completion(self, choices: list[sv.Choice]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": sv.SYSTEM_FINGERPRINT,
            "choices": [
                {
                    "index": c.index,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": self._logprobs(c.token_ids, c.logprobs),
                    "finish_reason": c.finish_reason,
                }
                for c in choices
            ],
            "usage": sv.usage(choices),
        } | self._timing(choices)

    def _logprobs(self, token_ids: list[int], lps: list[dict[int, float]]) -> dict[str, Any] | None:
        if not self.body.logprobs:
            return None
        content = []
        for tid, d in zip(token_ids, lps, strict=False):
            content.append(
                {
                    **self._entry(tid, d.get(tid, -9999.0)),
                    "top_logprobs": [self._entry(i, lp) for i, lp in sv.top_entries(d, self.top)],
                }
            )
        return {"content": content}

    def _entry(self, token_id: int, logprob: float) -> dict[str, Any]:
        text, raw = self.token_text.entry(token_id)
        return {"token": text, "logprob": logprob, "bytes": raw}

    async def events(
        self, stream: OutputStream, choices: dict[int, sv.Choice]
    ) -> AsyncIterator[str]:
        for c in choices.values():
            yield self._chunk(
                {
                    "index": c.index,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            )
        async for out in stream:
            c = choices[out.pid]
            c.add(out)
            if out.finish_reason is not None and out.finish_reason.is_failure:
                yield sv.sse_error(out.finish_reason, out.error)
                yield sv.sse("[DONE]")
                return
            if out.new_text or (self.body.logprobs and out.new_token_ids):
                yield self._chunk(
                    {
                        "index": c.index,
                        "delta": {"content": out.new_text},
                        "logprobs": self._logprobs(out.new_token_ids, out.logprobs or []),
                        "finish_reason": None,
                    }
                )
            if out.finished:
                yield self._chunk(
                    {
                        "index": c.index,
                        "delta": {},
                        "logprobs": None,
                        "finish_reason": out.finish_reason,
                    }
                )
        if self.body.include_usage:
            yield self._chunk(None, sv.usage(list(choices.values())))
        if self.body.timing:  # after every choice finished: a chunk with no choices
            yield self._chunk(None, None, **self._timing(list(choices.values())))
        yield sv.sse("[DONE]")
