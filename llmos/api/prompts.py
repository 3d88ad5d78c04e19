"""Turning what a client sends (chat messages or text) into prompt token ids for one engine.

Shared by the HTTP routes and the CLI's in-process mode, so both render chats identically.
"""

from __future__ import annotations

from typing import Any

from llmos.errors import InvalidRequest


def special_token(tokenizer: Any, token_id: int | None) -> str:
    """The text of a special token such as BOS (empty when the model has none)."""
    if token_id is None:
        return ""
    if hasattr(tokenizer, "token_to_str"):
        return str(tokenizer.token_to_str(token_id))
    return str(tokenizer.decode([token_id], skip_special_tokens=False))


def render_chat(
    engine: Any, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True
) -> str:
    """The chat template applied to `messages` (InvalidRequest on bad messages)."""
    from llmos.models.chat_template import render_chat as render

    tok = engine.tokenizer
    eos_ids = list(getattr(tok, "eos_token_ids", None) or [])
    return str(
        render(
            engine.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=special_token(tok, getattr(tok, "bos_token_id", None)),
            eos_token=special_token(tok, eos_ids[0] if eos_ids else None),
        )
    )


def encode_chat(
    engine: Any, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True
) -> list[int]:
    """Prompt token ids of a chat; BOS is added only if the template did not already emit it."""
    text = render_chat(engine, messages, add_generation_prompt=add_generation_prompt)
    return encode_text(engine, text, add_special_tokens=not _starts_with_bos(engine, text))


def encode_text(engine: Any, text: str, *, add_special_tokens: bool = True) -> list[int]:
    try:
        return list(engine.tokenizer.encode(text, add_special_tokens=add_special_tokens))
    except UnicodeError as exc:  # e.g. lone surrogates that slipped through
        raise InvalidRequest(
            f"The prompt is not valid Unicode text: {exc}.", param="prompt"
        ) from None


def _starts_with_bos(engine: Any, text: str) -> bool:
    tok = engine.tokenizer
    bos = special_token(tok, getattr(tok, "bos_token_id", None))
    return bool(bos) and text.startswith(bos)


def with_profile_system(
    messages: list[dict[str, Any]], profile: dict[str, Any]
) -> list[dict[str, Any]]:
    """The messages, led by the profile's system prompt when they bring none of their own."""
    system = profile.get("system")
    if not system or any(m["role"] in ("system", "developer") for m in messages):
        return messages
    return [{"role": "system", "content": system}, *messages]
