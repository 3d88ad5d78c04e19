"""`llmos events [--follow]`: the server's event log, one line per event (time, severity, kind,
model, message), like `journalctl`; `--follow` polls for new events until Ctrl-C."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import typer

from llmos.cli.common import URL_HELP, connect, console, safe_text
from llmos.client import Client
from llmos.monitor.events import EventKind

app = typer.Typer()

_AGO = re.compile(r"^(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_STYLES = {"warning": "yellow", "error": "bold red"}
FOLLOW_LIMIT = 1000  # events per poll while following


def parse_since(text: str) -> str:
    """What the server takes as `since`: a seq or an ISO time (local unless it has an offset);
    `10m`, `2h`, `1d` mean that long ago."""
    text = text.strip()
    m = _AGO.match(text.lower())
    if m:
        ago = timedelta(seconds=int(m.group(1)) * _UNIT_S[m.group(2)])
        return (datetime.now(UTC) - ago).isoformat()
    if text.isascii() and text.isdigit():
        return text
    try:
        # A time without an offset is local, as `llmos events` shows them.
        return datetime.fromisoformat(text).astimezone().isoformat()
    except (ValueError, OverflowError):
        raise typer.BadParameter(
            f"{text!r} is not a seq (42), a time (2026-12-02T14:00) or an age (10m, 2h, 1d)"
        ) from None


def format_event(event: dict[str, Any]) -> str:
    """`2026-12-02 14:02:11  warning  model_evicted      gemma3  gemma3 unloaded to ...`"""
    ts = datetime.fromisoformat(event["ts"]).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    model = event.get("model") or "-"
    line = f"{ts}  {event['severity']:<7}  {event['kind']:<17}  {model}  {event['message']}"
    return safe_text(line)


@app.command()
def events(
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new events."),
    as_json: bool = typer.Option(
        False, "--json", help="Print JSON (a list; one object per line with --follow)."
    ),
    kind: EventKind | None = typer.Option(None, "--kind", help="Only this kind of event."),
    model: str | None = typer.Option(None, "--model", "-m", help="Only events of this model."),
    limit: int = typer.Option(50, "--limit", "-n", min=1, max=1000, help="Most events shown."),
    since: str | None = typer.Option(
        None, "--since", help="From a seq, an ISO time, or an age (10m, 2h, 1d)."
    ),
    interval: float = typer.Option(1.0, "--interval", min=0.1, help="Seconds between polls."),
    url: str | None = typer.Option(None, "--url", help=URL_HELP),
) -> None:
    """Show what happened: models loaded and evicted (and why), failed loads, engine failures,
    preemption storms, quota and rate-limit refusals, keys created and revoked (admins only)."""
    start = parse_since(since) if since else None
    filters = {"kind": kind.value if kind else None, "model": model}
    with connect(url) as client:
        page = client.events(since=start, limit=limit, **filters)
        if as_json and not follow:
            console.print_json(json.dumps(page["data"]))
            return
        _show(page["data"], as_json)
        try:
            while follow:
                time.sleep(interval)
                page = _poll(client, page["last_seq"], filters)
                _show(page["data"], as_json)
        except KeyboardInterrupt:
            return


def _poll(client: Client, last_seq: int, filters: dict[str, str | None]) -> dict[str, Any]:
    return client.events(since=last_seq, limit=FOLLOW_LIMIT, **filters)


def _show(events: list[dict[str, Any]], as_json: bool) -> None:
    for event in events:
        if as_json:
            console.print(json.dumps(event), markup=False, soft_wrap=True)
        else:
            console.print(format_event(event), style=_STYLES.get(event["severity"]), markup=False)
