"""What chat and legacy completions share: request -> SamplingParams, submission, collection of a
group of processes (one per choice), usage, logprob text, and the SSE wire format.

A client that disconnects has its processes killed: non-streaming requests watch the socket while
they wait; streaming responses kill in a `finally` that runs however the stream ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from llmos.api.deps import ServerContext
from llmos.api.errors import llmos_error_body
from llmos.api.openai.schemas import SamplingFields
from llmos.errors import ContextTooLong, InvalidRequest, process_error
from llmos.kernel.loop import OutputStream
from llmos.kernel.outputs import FinishReason, ProcessOutput, RequestTiming
from llmos.kernel.params import SamplingParams, with_defaults
from llmos.kernel.process import Priority
from llmos.kernel.residency import ServedEngine

logger = logging.getLogger(__name__)

T = TypeVar("T")
SYSTEM_FINGERPRINT = "llmos-0.1.0"
# A token is rarely longer than this many characters; text longer than max_model_len times it
# cannot fit and is refused before the (possibly slow) tokenizer sees it.
MAX_CHARS_PER_TOKEN = 64
OFF_LOOP_CHARS = 16_384
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(slots=True)
class Choice:
    """Everything one process (one choice) produced, accumulated from its deltas."""

    index: int
    prompt_idx: int = 0
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, float]] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    error: str | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_output_tokens: int = 0
    timing: RequestTiming | None = None

    def add(self, out: ProcessOutput) -> None:
        self.text += out.new_text
        self.token_ids += out.new_token_ids
        if out.logprobs:
            self.logprobs += out.logprobs
        self.num_prompt_tokens = out.num_prompt_tokens or self.num_prompt_tokens
        self.num_cached_tokens = out.num_cached_tokens or self.num_cached_tokens
        self.num_output_tokens = out.num_output_tokens or len(self.token_ids)
        if out.finished:
            self.finish_reason = out.finish_reason
            self.error = out.error
            self.timing = out.timing


class Reply:
    """What chat and completion replies share: the chunk envelope and the `timing` extension.
    A subclass sets `chunk_object` and, in its constructor, id, created, model and body."""

    chunk_object = ""
    id: str
    created: int
    model: str
    body: Any  # the request: ChatCompletionRequest or CompletionRequest

    def _chunk(
        self,
        choice: dict[str, Any] | None,
        usage: dict[str, Any] | None = None,
        **extra: Any,
    ) -> str:
        data: dict[str, Any] = {
            "id": self.id,
            "object": self.chunk_object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [choice] if choice is not None else [],
        }
        if self.body.include_usage:
            data["usage"] = usage
        return sse(data | extra)

    def _timing(self, choices: list[Choice]) -> dict[str, Any]:
        """The llmos `timing` extension, when the request asked for it."""
        found = timing(choices) if self.body.timing else None
        return {"timing": found} if found is not None else {}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def parse_priority(value: str | int | None) -> Priority:
    return Priority.NORMAL if value is None else Priority.parse(value)


def sampling_params(
    req: SamplingFields,
    *,
    max_tokens: int | None,
    logprobs: int | None,
    choice_idx: int,
    profile: Mapping[str, Any] | None = None,
) -> SamplingParams:
    """SamplingParams for one choice; choice i > 0 gets seed + i so choices differ. A field the
    request omits (None) takes the model's `profile` value, else llmos's CHAT_DEFAULTS."""
    bias = None
    if req.logit_bias:
        try:
            bias = {int(k): v for k, v in req.logit_bias.items()}
        except ValueError:
            raise InvalidRequest(
                "Invalid value for 'logit_bias': keys must be token ids (integers as strings).",
                param="logit_bias",
            ) from None
    seed = None if req.seed is None else req.seed + choice_idx
    asked = {
        "max_tokens": max_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "top_k": req.top_k,
        "min_p": req.min_p,
        "repetition_penalty": req.repetition_penalty,
        "stop": req.stop_list if req.stop is not None else None,
    }
    params = SamplingParams(
        **({"max_tokens": None} | with_defaults(asked, profile)),  # None: until the context
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        logit_bias=bias,
        seed=seed,
        stop_token_ids=list(req.stop_token_ids or []),
        ignore_eos=bool(req.ignore_eos),
        logprobs=logprobs,
        min_tokens=req.min_tokens or 0,
        cache_salt=req.cache_salt,
    )
    return params


def precheck_length(engine: ServedEngine, num_chars: int) -> None:
    """Refuse text that cannot possibly fit the context, without tokenizing it."""
    max_len = engine.max_model_len
    if num_chars > max_len * MAX_CHARS_PER_TOKEN:
        raise ContextTooLong(
            f"This model's maximum context length is {max_len} tokens; the prompt has "
            f"{num_chars} characters, far more than fits.",
            param="messages",
            hint="shorten the prompt",
        )


async def off_loop(num_chars: int, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run tokenization inline when small, in a worker thread when large (keeps the loop free)."""
    if num_chars < OFF_LOOP_CHARS:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)


async def open_stream(
    ctx: ServerContext,
    engine: ServedEngine,
    prompts: list[tuple[list[int], SamplingParams]],
    priority: Priority,
    arrival_s: float,
    request: Request,
) -> OutputStream:
    """Submit to `engine` as the request's principal, after its model grant, quotas and rate
    limits."""
    from llmos.api.auth import open_guarded_stream

    return await open_guarded_stream(ctx, request, engine, prompts, priority, arrival_s)


async def collect(stream: OutputStream, request: Request, choices: dict[int, Choice]) -> bool:
    """Fold every output into `choices` (keyed by pid). False if the client went away first,
    in which case the processes have been killed."""
    consume = asyncio.ensure_future(_consume(stream, choices))
    disconnect = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({consume, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        if consume.done():
            consume.result()
            return True
        return False
    finally:
        consume.cancel()
        disconnect.cancel()
        stream.cancel()


async def _consume(stream: OutputStream, choices: dict[int, Choice]) -> None:
    async for out in stream:
        choices[out.pid].add(out)


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def raise_for_failures(choices: Iterable[Choice]) -> None:
    for c in choices:
        failure = process_error(c.finish_reason, c.error)
        if failure is not None:
            raise failure


def timing(choices: Iterable[Choice]) -> dict[str, Any] | None:
    """The `timing` extension: the breakdown of the choice that finished last (with n > 1,
    every choice's own under `choices`)."""
    timed = [c for c in choices if c.timing is not None]
    if not timed:
        return None
    last = max(timed, key=lambda c: c.timing.total_s if c.timing else 0.0)
    assert last.timing is not None
    data: dict[str, Any] = last.timing.as_dict()
    if len(timed) > 1:
        data["choices"] = [
            {"index": c.index, **c.timing.as_dict()} for c in timed if c.timing is not None
        ]
    return data


def usage(choices: list[Choice]) -> dict[str, Any]:
    """Prompt tokens count once per prompt (not per choice), as OpenAI does."""
    first_of_prompt: dict[int, Choice] = {}
    for c in sorted(choices, key=lambda c: c.index):
        first_of_prompt.setdefault(c.prompt_idx, c)
    prompt_tokens = sum(c.num_prompt_tokens for c in first_of_prompt.values())
    completion_tokens = sum(c.num_output_tokens for c in choices)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {
            "cached_tokens": sum(c.num_cached_tokens for c in first_of_prompt.values())
        },
    }


class TokenText:
    """Text and raw bytes of single tokens for logprobs, cached per id."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token_id: int) -> str:
        return self.entry(token_id)[0]

    def bytes(self, token_id: int) -> list[int]:
        return self.entry(token_id)[1]

    def entry(self, token_id: int) -> tuple[str, list[int]]:
        cached = self._cache.get(token_id)
        if cached is None:
            tok = self._tokenizer
            if hasattr(tok, "token_to_bytes"):
                raw = bytes(tok.token_to_bytes(token_id))
                cached = (raw.decode("utf-8", errors="replace"), list(raw))
            else:
                text = str(tok.decode([token_id], skip_special_tokens=False))
                cached = (text, list(text.encode()))
            self._cache[token_id] = cached
        return cached


def top_entries(lps: dict[int, float], k: int) -> list[tuple[int, float]]:
    return sorted(lps.items(), key=lambda kv: -kv[1])[:k]


# ---- SSE -----------------------------------------------------------------------------------


def sse(data: dict[str, Any] | str) -> str:
    body = (
        data
        if isinstance(data, str)
        else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    )
    return f"data: {body}\n\n"


def sse_error(finish_reason: str | None, error: str | None) -> str:
    """The error event that ends a stream whose process was killed or failed."""
    failure = process_error(finish_reason, error) or process_error("error", error)
    assert failure is not None
    return sse(llmos_error_body(failure))


class SendTimedOut(Exception):
    """A client stopped reading its stream for `api.send_timeout_s`."""


class ProcessStreamResponse(StreamingResponse):
    """An SSE response that kills its processes however it ends (done, error, disconnect, or a
    client that stops reading: a send blocked for `send_timeout_s` on a full socket)."""

    def __init__(
        self, content: AsyncIterator[str], stream: OutputStream, *, send_timeout_s: float = 0.0
    ) -> None:
        super().__init__(content, media_type="text/event-stream", headers=SSE_HEADERS)
        self._stream = stream
        self._send_timeout_s = send_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, self._bounded(send))
        except* SendTimedOut:
            logger.warning(
                "pids %s: the client stopped reading for %.0f s (api.send_timeout_s); killed",
                self._stream.pids,
                self._send_timeout_s,
            )
        finally:
            self._stream.cancel()

    def _bounded(self, send: Send) -> Send:
        if self._send_timeout_s <= 0:
            return send
        timeout_s = self._send_timeout_s

        async def bounded_send(message: Message) -> None:
            # uvicorn's send waits for the socket to drain once its buffers are full.
            try:
                await asyncio.wait_for(send(message), timeout_s)
            except TimeoutError:
                raise SendTimedOut from None

        return bounded_send


def now_s() -> int:
    return int(time.time())
