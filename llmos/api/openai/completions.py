"""POST /v1/completions (legacy): text or token-id prompts, one process per prompt and choice."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from llmos.api.auth import granted_model
from llmos.api.deps import ServerContext, body_schema, get_context, json_body
from llmos.api.openai import serving as sv
from llmos.api.openai.responses import SSE_STREAM, Completion
from llmos.api.openai.schemas import CompletionRequest
from llmos.api.openapi import responses
from llmos.api.prompts import encode_text
from llmos.errors import InvalidRequest
from llmos.kernel.loop import OutputStream
from llmos.kernel.residency import ServedEngine

router = APIRouter()
DEFAULT_MAX_TOKENS = 16  # OpenAI's and vLLM's default for legacy completions


@router.post(
    "/v1/completions",
    openapi_extra=body_schema(CompletionRequest),
    response_model=None,
    responses=responses(Completion, 404, 503, content=SSE_STREAM),
)
async def create_completion(
    request: Request,
    body: CompletionRequest = Depends(json_body(CompletionRequest)),
    ctx: ServerContext = Depends(get_context),
) -> Response:
    """Continue a prompt (string, list of strings, token ids or lists of token ids). The
    `model` may be any registry model you are granted; one not resident is loaded first."""
    arrival_s = time.monotonic()
    model = await granted_model(ctx, request, body.model)
    _refuse_unsupported(body)
    n = body.n or 1
    max_tokens = body.max_tokens or DEFAULT_MAX_TOKENS
    async with ctx.use_model(model) as engine:
        prompt_ids = await _prompt_ids(engine, body.prompt)
        prompts = [
            (
                ids,
                sv.sampling_params(
                    body,
                    max_tokens=max_tokens,
                    logprobs=body.logprobs,
                    choice_idx=i,
                    profile=engine.profile,
                ),
            )
            for ids in prompt_ids
            for i in range(n)
        ]
        priority = sv.parse_priority(body.priority)
        stream = await sv.open_stream(ctx, engine, prompts, priority, arrival_s, request)
    choices = {pid: sv.Choice(index=k, prompt_idx=k // n) for k, pid in enumerate(stream.pids)}
    reply = _Reply(engine, model, body, prompt_ids)
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


def _refuse_unsupported(body: CompletionRequest) -> None:
    if body.echo and body.logprobs is not None:
        raise InvalidRequest(
            "'echo' together with 'logprobs' (prompt logprobs) is not supported yet.", param="echo"
        )
    if body.suffix:
        raise InvalidRequest("'suffix' is not supported.", param="suffix")
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise InvalidRequest("'best_of' other than n is not supported.", param="best_of")


async def _prompt_ids(engine: ServedEngine, prompt: Any) -> list[list[int]]:
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise InvalidRequest("The prompt is empty.", param="prompt")
    if isinstance(prompt[0], int):
        return [list(prompt)]
    if isinstance(prompt[0], list):
        if any(not p for p in prompt):
            raise InvalidRequest("A token-id prompt is empty.", param="prompt")
        return [list(p) for p in prompt]
    num_chars = sum(len(p) for p in prompt)
    sv.precheck_length(engine, max(len(p) for p in prompt))
    return [await sv.off_loop(num_chars, encode_text, engine, p) for p in prompt]


class _Reply(sv.Reply):
    """Formats one request's choices as a text completion or as chunks."""

    chunk_object = "text_completion"

    def __init__(
        self,
        engine: ServedEngine,
        model: str,
        body: CompletionRequest,
        prompt_ids: list[list[int]],
    ) -> None:
        self.id = sv.new_id("cmpl")
        self.created = sv.now_s()
        self.model = model
        self.body = body
        self.tokenizer = engine.tokenizer
        self.token_text = sv.TokenText(engine.tokenizer)
        self._prompt_ids = prompt_ids
        self._prompt_text: dict[int, str] = {}

    def prompt_text(self, prompt_idx: int) -> str:
        if not self.body.echo:
            return ""
        if prompt_idx not in self._prompt_text:
            ids = self._prompt_ids[prompt_idx]
            self._prompt_text[prompt_idx] = self.tokenizer.decode(ids, skip_special_tokens=False)
        return self._prompt_text[prompt_idx]

    def completion(self, choices: list[sv.Choice]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": sv.SYSTEM_FINGERPRINT,
            "choices": [
                {
                    "index": c.index,
                    "text": self.prompt_text(c.prompt_idx) + c.text,
                    "logprobs": self._logprobs(c.token_ids, c.logprobs, 0),
                    "finish_reason": c.finish_reason,
                }
                for c in choices
            ],
            "usage": sv.usage(choices),
        } | self._timing(choices)

    def _logprobs(
        self, token_ids: list[int], lps: list[dict[int, float]], offset: int
    ) -> dict[str, Any] | None:
        if self.body.logprobs is None:
            return None
        tokens, token_logprobs, tops, offsets = [], [], [], []
        for tid, d in zip(token_ids, lps, strict=False):
            text = self.token_text(tid)
            tokens.append(text)
            token_logprobs.append(d.get(tid, -9999.0))
            tops.append(
                {self.token_text(i): lp for i, lp in sv.top_entries(d, max(self.body.logprobs, 1))}
            )
            offsets.append(offset)
            offset += len(text)
        return {
            "tokens": tokens,
            "token_logprobs": token_logprobs,
            "top_logprobs": tops,
            "text_offset": offsets,
        }

    async def events(
        self, stream: OutputStream, choices: dict[int, sv.Choice]
    ) -> AsyncIterator[str]:
        if self.body.echo:
            for c in choices.values():
                yield self._chunk(
                    {
                        "index": c.index,
                        "text": self.prompt_text(c.prompt_idx),
                        "logprobs": None,
                        "finish_reason": None,
                    }
                )
        async for out in stream:
            c = choices[out.pid]
            offset = len(c.text)
            c.add(out)
            if out.finish_reason is not None and out.finish_reason.is_failure:
                yield sv.sse_error(out.finish_reason, out.error)
                yield sv.sse("[DONE]")
                return
            if out.new_text or (self.body.logprobs is not None and out.new_token_ids):
                yield self._chunk(
                    {
                        "index": c.index,
                        "text": out.new_text,
                        "logprobs": self._logprobs(out.new_token_ids, out.logprobs or [], offset),
                        "finish_reason": None,
                    }
                )
            if out.finished:
                yield self._chunk(
                    {
                        "index": c.index,
                        "text": "",
                        "logprobs": None,
                        "finish_reason": out.finish_reason,
                    }
                )
        if self.body.include_usage:
            yield self._chunk(None, sv.usage(list(choices.values())))
        if self.body.timing:  # after every choice finished: a chunk with no choices
            yield self._chunk(None, None, **self._timing(list(choices.values())))
        yield sv.sse("[DONE]")
