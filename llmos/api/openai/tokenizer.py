"""POST /tokenize, POST /detokenize, GET /tokenizer_info in vLLM's shapes.

lm-eval probes these and then needs no local copy of the tokenizer.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from llmos.api.deps import ServerContext, body_schema, get_context, json_body
from llmos.api.openai import serving as sv
from llmos.api.openai.schemas import DetokenizeRequest, TokenizeRequest
from llmos.api.prompts import encode_chat, encode_text, render_chat, special_token
from llmos.errors import InvalidRequest

router = APIRouter()


@router.post("/tokenize", openapi_extra=body_schema(TokenizeRequest))
async def tokenize(
    body: TokenizeRequest = Depends(json_body(TokenizeRequest)),
    ctx: ServerContext = Depends(get_context),
) -> dict[str, Any]:
    """Token ids of a prompt, or of chat messages rendered by the model's template."""
    if body.model is not None:
        ctx.resolve_model(body.model)
    if body.messages is not None:
        messages = [m.model_dump(exclude_none=True) | {"content": m.text()} for m in body.messages]
        sv.precheck_length(ctx, sum(len(m["content"]) for m in messages))
        gen = bool(body.add_generation_prompt)
        if body.add_special_tokens is None:
            tokens = encode_chat(ctx.engine, messages, add_generation_prompt=gen)
        else:
            text = render_chat(ctx.engine, messages, add_generation_prompt=gen)
            tokens = encode_text(ctx.engine, text, add_special_tokens=body.add_special_tokens)
    else:
        prompt = body.prompt or ""
        sv.precheck_length(ctx, len(prompt))
        add = True if body.add_special_tokens is None else body.add_special_tokens
        tokens = await sv.off_loop(
            len(prompt), encode_text, ctx.engine, prompt, add_special_tokens=add
        )
    return {
        "count": len(tokens),
        "max_model_len": ctx.engine.max_model_len,
        "tokens": tokens,
        "token_strs": None,
    }


@router.post("/detokenize", openapi_extra=body_schema(DetokenizeRequest))
async def detokenize(
    body: DetokenizeRequest = Depends(json_body(DetokenizeRequest)),
    ctx: ServerContext = Depends(get_context),
) -> dict[str, Any]:
    """The text of a list of token ids."""
    if body.model is not None:
        ctx.resolve_model(body.model)
    vocab = ctx.engine.tokenizer.vocab_size
    bad = [t for t in body.tokens if not 0 <= t < vocab]
    if bad:
        raise InvalidRequest(f"Token ids must be in 0..{vocab - 1}; got {bad[:5]}.", param="tokens")
    return {"prompt": ctx.engine.tokenizer.decode(body.tokens, skip_special_tokens=False)}


@router.get("/tokenizer_info")
async def tokenizer_info(ctx: ServerContext = Depends(get_context)) -> dict[str, Any]:
    """The tokenizer's special tokens, chat template and limits."""
    tok = ctx.engine.tokenizer
    eos_ids = list(getattr(tok, "eos_token_ids", None) or [])
    return {
        "tokenizer_class": type(tok).__name__,
        "model": ctx.model_name,
        "vocab_size": tok.vocab_size,
        "model_max_length": ctx.engine.max_model_len,
        "bos_token": special_token(tok, getattr(tok, "bos_token_id", None)) or None,
        "bos_token_id": getattr(tok, "bos_token_id", None),
        "eos_token": special_token(tok, eos_ids[0]) if eos_ids else None,
        "eos_token_ids": eos_ids,
        "chat_template": ctx.engine.chat_template,
    }
