"""`llmos top`: a live view of the kernel (processes, tokens/s, KV memory) until Ctrl-C.

On a terminal the screen redraws in place; piped, it prints one frame per interval (like
`top -b`), so it can be logged or captured.
"""

from __future__ import annotations

import time

import typer
from rich.console import Group
from rich.live import Live

from llmos.cli.common import URL_HELP, connect, console
from llmos.client import Client
from llmos.monitor.top import frame

app = typer.Typer()


@app.command()
def top(
    url: str | None = typer.Option(None, "--url", help=URL_HELP),
    interval: float = typer.Option(1.0, "--interval", "-i", min=0.1, help="Seconds per refresh."),
    once: bool = typer.Option(False, "--once", help="Print one frame and exit."),
) -> None:
    """Show processes, throughput and KV memory, refreshing until Ctrl-C."""
    with connect(url) as client:
        try:
            if once:
                console.print(_frame(client))
            elif console.is_terminal:
                _live(client, interval)
            else:
                while True:
                    console.print(_frame(client))
                    console.print()
                    time.sleep(interval)
        except KeyboardInterrupt:
            return


def _frame(client: Client) -> Group:
    return frame(client.stats(), client.processes())


def _live(client: Client, interval: float) -> None:
    with Live(_frame(client), console=console, refresh_per_second=4) as live:
        while True:
            time.sleep(interval)
            live.update(_frame(client))
