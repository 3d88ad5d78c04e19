"""`llmos top`: a live view of the kernel (processes, tokens/s, KV memory) until Ctrl-C."""

from __future__ import annotations

import time

import typer
from rich.live import Live

from llmos.cli.common import URL_HELP, connect, console
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
        if once:
            console.print(frame(client.stats(), client.processes()))
            return
        with Live(
            frame(client.stats(), client.processes()),
            console=console,
            refresh_per_second=4,
            screen=False,
        ) as live:
            try:
                while True:
                    time.sleep(interval)
                    live.update(frame(client.stats(), client.processes()))
            except KeyboardInterrupt:
                return
