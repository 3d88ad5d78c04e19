"""`llmos run [MODEL] PROMPT` (one answer, streamed) and `llmos chat [MODEL]` (a REPL)."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import typer

from llmos.cli.backend import Backend, Messages, open_backend
from llmos.cli.common import URL_HELP, console, err_console, safe_text
from llmos.errors import LlmosError

app = typer.Typer()

CHAT_HELP = "Type a message; /bye leaves, /clear forgets the conversation, Ctrl-C stops an answer."


def _params(max_tokens: int | None, temperature: float | None, seed: int | None) -> dict[str, Any]:
    raw = {"max_tokens": max_tokens, "temperature": temperature, "seed": seed}
    return {k: v for k, v in raw.items() if v is not None}


def _stream_answer(backend: Backend, messages: Messages, params: dict[str, Any]) -> str:
    """Print the answer as it streams; the generation is cancelled however this ends."""
    answer = ""
    with contextlib.closing(backend.stream_chat(messages, params)) as deltas:
        for delta in deltas:
            answer += delta
            console.print(safe_text(delta), end="", markup=False)
    return answer


def _describe_defaults(backend: Backend, params: dict[str, Any], system: str | None) -> str:
    """One line: the sampling settings this chat uses and where each comes from (an option
    given here, the model's profile, or llmos's defaults), and whose system prompt."""
    try:
        defaults, model_system = backend.defaults()
    except LlmosError:
        defaults, model_system = {}, None  # an older server: say what we know
    settings = dict(defaults)
    settings |= {k: (v, "option") for k, v in params.items() if k != "seed"}
    parts = [
        f"{name}={_show(value)} ({source})"
        for name, (value, source) in settings.items()
        if name != "repetition_penalty" or value != 1.0
    ]
    if system:
        parts.append("system prompt: yours")
    elif model_system:
        parts.append("system prompt: the model's")
    return "settings: " + (", ".join(parts) if parts else "the server's defaults")


def _show(value: Any) -> str:
    return ",".join(map(repr, value)) if isinstance(value, list) else str(value)


@app.command()
def run(
    args: list[str] = typer.Argument(
        None, metavar="[MODEL] PROMPT", help="Optional model, then the prompt (quote it)."
    ),
    url: str | None = typer.Option(None, "--url", help=URL_HELP),
    system: str | None = typer.Option(None, "--system", "-s", help="A system prompt."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", "-n", min=1),
    temperature: float | None = typer.Option(None, "--temperature", "-t", min=0.0, max=2.0),
    seed: int | None = typer.Option(None, "--seed"),
) -> None:
    """Answer one prompt, streaming the text. Piped stdin is appended to the prompt.

    Uses the server at --url or $LLMOS_URL; otherwise the local default server if it answers,
    else loads the model in this process.
    """
    args = list(args or [])
    if len(args) > 2:
        raise typer.BadParameter(
            "give at most MODEL and PROMPT; quote a prompt with spaces", param_hint="[MODEL] PROMPT"
        )
    model = args[0] if len(args) == 2 else None
    prompt = args[-1] if args else ""
    if not sys.stdin.isatty():
        piped = sys.stdin.read().strip()
        prompt = f"{prompt}\n\n{piped}".strip() if piped else prompt
    if not prompt:
        raise typer.BadParameter("a prompt is required (argument or stdin)", param_hint="PROMPT")
    messages: Messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    backend = open_backend(model, url)
    _stream_answer(backend, messages, _params(max_tokens, temperature, seed))
    console.print()


@app.command()
def chat(
    model: str | None = typer.Argument(None, help="Model to chat with (default: the served one)."),
    url: str | None = typer.Option(None, "--url", help=URL_HELP),
    system: str | None = typer.Option(None, "--system", "-s", help="A system prompt."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", "-n", min=1),
    temperature: float | None = typer.Option(None, "--temperature", "-t", min=0.0, max=2.0),
) -> None:
    """Chat interactively, keeping the conversation. /bye leaves; Ctrl-C stops an answer."""
    with contextlib.suppress(ImportError):  # line editing and history for input()
        import readline  # noqa: F401
    backend = open_backend(model, url)
    params = _params(max_tokens, temperature, None)
    start: Messages = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    err_console.print(f"chatting with {backend.model}. {CHAT_HELP}", markup=False, style="dim")
    err_console.print(_describe_defaults(backend, params, system), markup=False, style="dim")
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            console.print()
            return
        except KeyboardInterrupt:
            err_console.print("\n(use /bye or Ctrl-D to leave)", markup=False, style="dim")
            continue
        text = line.strip()
        if text in ("/bye", "/exit", "/quit"):
            return
        if text == "/clear":
            messages = list(start)
            continue
        if text in ("/?", "/help"):
            err_console.print(CHAT_HELP, markup=False)
            continue
        if not text:
            continue
        messages.append({"role": "user", "content": text})
        try:
            answer = _stream_answer(backend, messages, params)
        except KeyboardInterrupt:
            answer = ""
            err_console.print(" [stopped]", markup=False, style="dim")
        console.print()
        if answer:
            messages.append({"role": "assistant", "content": answer})
        else:
            messages.pop()  # a stopped answer leaves no half turn behind
