"""What every CLI command shares: the Rich consoles, finding the server, safe terminal text,
and the root group that turns any LlmosError into one `error: ...` line and exit status 1.
"""

from __future__ import annotations

import os
import re
import traceback
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from llmos.client import DEFAULT_URL, Client
from llmos.errors import LlmosError

console = Console(highlight=False, soft_wrap=True, emoji=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)

# Terminal control sequences (CSI/OSC/other ESC forms) and C0/C1 controls except tab/newline:
# model output must not be able to move the cursor, retitle the window or hide text.
_CONTROL = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b.?"
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"
)

URL_HELP = "Server URL (default: $LLMOS_URL, else http://127.0.0.1:8000)."


def safe_text(text: str) -> str:
    """`text` with terminal control sequences removed."""
    return _CONTROL.sub("", text)


def resolve_url(url: str | None) -> tuple[str, bool]:
    """The server URL and whether the user chose it (--url, then $LLMOS_URL, then default)."""
    chosen = url or os.environ.get("LLMOS_URL")
    return (chosen or DEFAULT_URL), bool(chosen)


def connect(url: str | None) -> Client:
    """A client for commands that need a server (ps, kill, nice, top)."""
    from llmos.cli.credentials import resolve_api_key

    resolved = resolve_url(url)[0]
    return Client(resolved, api_key=resolve_api_key(resolved))


def print_error(exc: BaseException) -> None:
    if isinstance(exc, LlmosError):
        message = exc.message.rstrip(".")
        hint = f" (hint: {exc.hint})" if exc.hint else ""
    else:
        message = f"internal error: {type(exc).__name__}: {exc}"
        hint = " (run with --debug for the traceback)"
    err_console.print(f"error: {safe_text(message)}{hint}", markup=False)


class LlmosGroup(TyperGroup):
    """The root command group: one-line errors (exit 1) unless --debug; usage errors exit 2."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):  # usage errors, --help, exits
            raise
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except Exception as exc:
            if ctx.params.get("debug"):
                err_console.print(traceback.format_exc(), markup=False)
            print_error(exc)
            raise typer.Exit(1) from None
