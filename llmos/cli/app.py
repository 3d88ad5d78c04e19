"""The `llmos` command: a table of command modules, each a small Typer app, under one root.

Errors from any command print one line (`error: ...` and a hint) and exit 1; `--debug` adds the
traceback; usage errors exit 2 (Click's convention).
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import typer

import llmos
from llmos.cli import doctor, events, placement, ps, run, serve, top
from llmos.cli.common import LlmosGroup

app = typer.Typer(
    cls=LlmosGroup,
    no_args_is_help=True,
    add_completion=False,
    help="llmos: an operating system for LLMs.",
    pretty_exceptions_enable=False,
)

# Command modules merged into the root (each defines one or more commands).
COMMAND_MODULES = (serve, run, ps, top, doctor, events, placement)
# Sub-apps owned by other subsystems: `llmos models ...`, `llmos data ...`, `llmos backup ...`.
SUB_APPS = {
    "models": "llmos.cli.models",
    "data": "llmos.cli.data",
    "backup": "llmos.cli.backup",
    "users": "llmos.cli.users",
    "keys": "llmos.cli.keys",
    "audit": "llmos.cli.audit",
}

for module in COMMAND_MODULES:
    for command in module.app.registered_commands:
        app.registered_commands.append(command)

for name, module_name in SUB_APPS.items():
    if importlib.util.find_spec(module_name) is not None:
        app.add_typer(importlib.import_module(module_name).app, name=name)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmos {llmos.__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    api_key: str | None = typer.Option(
        None, "--api-key", help="API key for the server (default: $LLMOS_API_KEY, else admin.key)."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """llmos: an operating system for LLMs."""
    if api_key:
        # Every command reads the key from here, whichever sub-app it lives in.
        os.environ["LLMOS_API_KEY"] = api_key


def main() -> None:
    app()


if __name__ == "__main__":
    main()
