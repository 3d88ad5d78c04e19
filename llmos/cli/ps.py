"""`llmos ps`, `llmos kill PID`, `llmos nice PID CLASS`: the process table, like a Unix shell."""

from __future__ import annotations

import enum
import json
import time

import typer
from rich.console import Console
from rich.measure import Measurement

from llmos.cli.common import URL_HELP, connect, console
from llmos.monitor.top import process_table

app = typer.Typer()


class PriorityClass(enum.StrEnum):
    interactive = "interactive"
    normal = "normal"
    batch = "batch"


@app.command()
def ps(
    url: str | None = typer.Option(None, "--url", help=URL_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List live processes (generation requests) on the server."""
    with connect(url) as client:
        processes = client.processes()
    if as_json:
        console.print_json(json.dumps(processes))
    elif not processes:
        console.print("no live processes", markup=False, style="dim")
    else:
        table = process_table(processes, now_s=time.time())
        # wider than the screen: let the terminal wrap the lines rather than cut columns off
        need = Measurement.get(console, console.options.update(max_width=1000), table).minimum
        wide = console if need <= console.width else Console(width=need, highlight=False)
        wide.print(table)


@app.command()
def kill(
    pid: int = typer.Argument(..., help="Process id (see `llmos ps`)."),
    url: str | None = typer.Option(None, "--url", help=URL_HELP),
) -> None:
    """Kill a process: its client gets an error and its KV blocks are freed."""
    with connect(url) as client:
        client.kill(pid)
    console.print(f"killed {pid}", markup=False)


@app.command()
def nice(
    pid: int = typer.Argument(..., help="Process id (see `llmos ps`)."),
    priority: PriorityClass = typer.Argument(
        ..., metavar="CLASS", case_sensitive=False, help="interactive, normal or batch."
    ),
    url: str | None = typer.Option(None, "--url", help=URL_HELP),
) -> None:
    """Move a process to another priority class."""
    with connect(url) as client:
        result = client.renice(pid, priority.value)
    console.print(f"{pid}: priority {result['priority']}", markup=False)
