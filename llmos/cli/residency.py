"""`llmos models ps`, `llmos models pin MODEL`, `llmos models unpin MODEL`: what the server holds
resident and why, and admin pins (registered on the `models` group; they talk to the server)."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from llmos.cli.common import URL_HELP, connect, console, safe_text
from llmos.monitor.events import format_duration_s


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def ps(
    url: str | None = typer.Option(None, "--url", help=URL_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Show the models the server holds resident (and pinned ones it could not load) and why:
    pinned, reserved, busy, loading, preloaded, predicted demand, recently used."""
    with connect(url) as client:
        report = client.residency()
    if as_json:
        console.print_json(json.dumps(report))
        return
    console.print(_summary(report), markup=False)
    table = Table("MODEL", "STATE", "MEMORY", "LIVE", "PREDICTED", "IDLE", "WHY", box=None)
    for m in report["data"]:
        why = m["why"] + (f" (not loaded: {m['note']})" if m.get("note") else "")
        table.add_row(
            safe_text(m["model"]),
            m["state"],
            human_bytes(m["num_bytes"]) if m["num_bytes"] else "-",
            str(m["num_live"]),
            f"{m['predicted_requests']:.1f}",
            format_duration_s(m["idle_s"]) if m["idle_s"] is not None else "-",
            safe_text(why),
        )
    console.print(table)


def _summary(report: dict[str, Any]) -> str:
    num = sum(1 for m in report["data"] if m["state"] == "resident")
    budget = report["memory_budget_bytes"]
    memory = human_bytes(report["used_bytes"])
    memory += f" of {human_bytes(budget)} budget" if budget else " (no budget)"
    window = format_duration_s(report["demand_window_s"])
    preload = "on" if report["is_preloading"] else "off"
    return (
        f"{num} of at most {report['max_resident_models']} models resident, {memory}; "
        f"PREDICTED = requests in the next {window}; preloading {preload} "
        f"({report['num_preloads']} preloads, {report['num_loads_on_demand']} cold loads)"
    )


def pin(
    model: str = typer.Argument(..., help="The model (name[:tag]) to keep resident."),
    url: str | None = typer.Option(None, "--url", help=URL_HELP),
) -> None:
    """Pin a model resident on the server: loaded now if need be, never unloaded until unpinned
    (kept across restarts). Refused, with the numbers, if the pins cannot all fit."""
    with connect(url) as client:
        result = client.pin(model)
    if result["state"] == "resident":
        console.print(f"pinned {result['model']} (resident)", markup=False)
    else:
        note = result.get("note") or "not loaded yet"
        console.print(
            f"pinned {result['model']}; not resident now: {safe_text(note)}", markup=False
        )


def unpin(
    model: str = typer.Argument(..., help="A pinned model."),
    url: str | None = typer.Option(None, "--url", help=URL_HELP),
) -> None:
    """Unpin a model: it stays resident until its room is needed."""
    with connect(url) as client:
        result = client.unpin(model)
    console.print(f"unpinned {result['model']}", markup=False)
