"""Chat templates: render a model's Jinja template over validated messages, sandboxed.

Invariants: templates (model files are untrusted input, CVE-2024-34359) only ever run inside
Jinja2's ImmutableSandboxedEnvironment; the environment matches transformers'
``apply_chat_template`` (trim_blocks, lstrip_blocks, loopcontrols, ``raise_exception``,
``strftime_now``, a non-HTML-escaping ``tojson``) so prompts match it character for character;
every failure a request can cause is an InvalidRequest naming what was wrong.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from typing import Any, NoReturn

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmos.errors import InvalidRequest

# Used for a model that ships no template (e.g. Gemma 3 270M base): plain "role: content" turns
# separated by a blank line, then "assistant:" for the reply. No BOS: the tokenizer adds it.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


class _GenerationTag(Extension):
    """``{% generation %}...{% endgeneration %}`` (HF's assistant-mask marker): render the body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller: Callable[[], str]) -> str:
        return caller()


def _raise_exception(message: str) -> NoReturn:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson HTML-escapes (<, >, &, '); transformers' does not.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.loopcontrols", _GenerationTag],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@lru_cache(maxsize=32)
def compile_template(template: str) -> jinja2.Template:
    """Parse a template once (cached); InvalidRequest if it is not valid Jinja."""
    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise InvalidRequest(
            f"The model's chat template is not valid Jinja (line {e.lineno}): {e.message}"
        ) from e


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Check roles and contents; text parts are joined into one string. Returns copies."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty list.", param="messages")
    return [_validate_message(idx, msg) for idx, msg in enumerate(messages)]


def _validate_message(idx: int, msg: Any) -> dict[str, Any]:
    where = f"messages[{idx}]"
    if not isinstance(msg, dict):
        raise InvalidRequest(f"{where} must be an object, got {type(msg).__name__}.", param=where)
    role = msg.get("role")
    if not isinstance(role, str) or not role:
        raise InvalidRequest(f"{where}.role must be a non-empty string.", param=f"{where}.role")
    content = msg.get("content")
    if isinstance(content, list):
        content = "\n".join(_text_part(where, part_idx, p) for part_idx, p in enumerate(content))
    elif content is not None and not isinstance(content, str):
        raise InvalidRequest(
            f"{where}.content must be a string or a list of text parts, "
            f"got {type(content).__name__}.",
            param=f"{where}.content",
        )
    if content is None and not msg.get("tool_calls"):
        raise InvalidRequest(f"{where}.content is missing.", param=f"{where}.content")
    return {**msg, "content": content}


def _text_part(where: str, part_idx: int, part: Any) -> str:
    here = f"{where}.content[{part_idx}]"
    if not isinstance(part, dict) or part.get("type") != "text":
        got = part.get("type") if isinstance(part, dict) else type(part).__name__
        raise InvalidRequest(f"{here} has type {got!r}; only text parts are supported.", param=here)
    text = part.get("text")
    if not isinstance(text, str):
        raise InvalidRequest(f"{here}.text must be a string.", param=here)
    return text


def render_chat(
    template: str | None,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str | None = None,
    eos_token: str | None = None,
    **extra: Any,
) -> str:
    """Render ``messages`` with the model's template (FALLBACK_TEMPLATE when it has none).

    ``extra`` reaches the template as variables (``tools``, ``documents``, ``enable_thinking``...).
    """
    checked = validate_messages(messages)
    compiled = compile_template(template if template else FALLBACK_TEMPLATE)
    variables: dict[str, Any] = {"tools": None, "documents": None, **extra}
    if bos_token is not None:
        variables["bos_token"] = bos_token
    if eos_token is not None:
        variables["eos_token"] = eos_token
    try:
        return compiled.render(
            messages=checked, add_generation_prompt=add_generation_prompt, **variables
        )
    except jinja2.exceptions.SecurityError as e:
        raise InvalidRequest(
            f"The chat template tried an operation the sandbox forbids: {e}"
        ) from e
    except jinja2.TemplateError as e:  # raise_exception(...) and undefined variables land here
        raise InvalidRequest(f"The chat template rejected the request: {e}") from e
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        raise InvalidRequest(f"The chat template failed on these messages: {e!r}") from e
