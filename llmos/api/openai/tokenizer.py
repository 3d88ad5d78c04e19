"""POST /tokenize, POST /detokenize, GET /tokenizer_info in vLLM's shapes.

lm-eval probes these and then needs no local copy of the tokenizer.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from llmos.api.auth import granted_model
from llmos.api.deps import ServerContext, body_schema, get_context, json_body
from llmos.api.openai import serving as sv
from llmos.api.openai.responses import DetokenizeResponse, TokenizeResponse, TokenizerInfo
from llmos.api.openai.schemas import DetokenizeRequest, TokenizeRequest
from llmos.api.openapi import responses
from llmos.api.prompts import encode_chat, encode_text, render_chat, special_token
from llmos.errors import InvalidRequest
from llmos.kernel.residency import ServedEngine

router = APIRouter()


@router.post(
    "/tokenize",
    openapi_extra=body_schema(TokenizeRequest),
    response_model=None,
    responses=responses(TokenizeResponse, 404, 503),
)
async def tokenize(
    request: Request,
    body: TokenizeRequest = Depends(json_body(TokenizeRequest)),
    ctx: ServerContext = Depends(get_context),
) -> dict[str, Any]:
    """Token ids of a prompt, or of chat messages rendered by the model's template (the
    server's default model unless `model` names another)."""
    model = await granted_model(ctx, request, body.model or ctx.default_model)
    async with ctx.use_model(model) as engine:
        tokens = await _tokenize(engine, body)
    return {
        "count": len(tokens),
        "max_model_len": engine.max_model_len,
        "tokens": tokens,
        "token_strs": None,
    }


async def _tokenize(engine: ServedEngine, body: TokenizeRequest) -> list[int]:
    if body.messages is not None:
        messages = [m.model_dump(exclude_none=True) | {"content": m.text()} for m in body.messages]
        sv.precheck_length(engine, sum(len(m["content"]) for m in messages))
        gen = bool(body.add_generation_prompt)
        if body.add_special_tokens is None:
            return encode_chat(engine, messages, add_generation_prompt=gen)
        text = render_chat(engine, messages, add_generation_prompt=gen)
        return encode_text(engine, text, add_special_tokens=body.add_special_tokens)
    prompt = body.prompt or ""
    sv.precheck_length(engine, len(prompt))
    add = True if body.add_special_tokens is None else body.add_special_tokens
    return await sv.off_loop(len(prompt), encode_text, engine, prompt, add_special_tokens=add)


@router.post(
    "/detokenize",
    openapi_extra=body_schema(DetokenizeRequest),
    response_model=None,
    responses=responses(DetokenizeResponse, 404, 503),
)
async def detokenize(
    request: Request,
    body: DetokenizeRequest = Depends(json_body(DetokenizeRequest)),
    ctx: ServerContext = Depends(get_context),
) -> dict[str, Any]:
    """The text of a list of token ids (default model unless `model` names another)."""
    model = await granted_model(ctx, request, body.model or ctx.default_model)
    async with ctx.use_model(model) as engine:
        tok = engine.tokenizer
    bad = [t for t in body.tokens if not 0 <= t < tok.vocab_size]
    if bad:
        raise InvalidRequest(
            f"Token ids must be in 0..{tok.vocab_size - 1}; got {bad[:5]}.", param="tokens"
        )
    return {"prompt": tok.decode(body.tokens, skip_special_tokens=False)}


@router.get("/tokenizer_info", response_model=None, responses=responses(TokenizerInfo, 404, 503))
async def tokenizer_info(
    request: Request, model: str | None = None, ctx: ServerContext = Depends(get_context)
) -> dict[str, Any]:
    """The tokenizer's special tokens, chat template and limits (default model unless the
    `model` query parameter names another)."""
    model_id = await granted_model(ctx, request, model or ctx.default_model)
    async with ctx.use_model(model_id) as engine:
        tok = engine.tokenizer
    eos_ids = list(getattr(tok, "eos_token_ids", None) or [])
    return {
        "tokenizer_class": type(tok).__name__,
        "model": model_id,
        "vocab_size": tok.vocab_size,
        "model_max_length": engine.max_model_len,
        "bos_token": special_token(tok, getattr(tok, "bos_token_id", None)) or None,
        "bos_token_id": getattr(tok, "bos_token_id", None),
        "eos_token": special_token(tok, eos_ids[0]) if eos_ids else None,
        "eos_token_ids": eos_ids,
        "chat_template": engine.chat_template,
    }
