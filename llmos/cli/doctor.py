"""`llmos doctor`: one line per check (✓ ok, ! warning, ✗ failure with the command that fixes
it), then a summary; `--json` prints the rows for scripts. Exit 0 when nothing failed, else 1."""

from __future__ import annotations

import dataclasses
import json

import typer
from pydantic import ValidationError
from rich.markup import escape

from llmos.cli.common import URL_HELP, console, resolve_url, safe_text
from llmos.cli.credentials import resolve_api_key
from llmos.cli.settings import cli_settings
from llmos.monitor.doctor import CheckResult, Inspection, diagnose, is_healthy, settings_failure

app = typer.Typer()

MARKS = {"ok": "[green]✓[/green]", "warn": "[yellow]![/yellow]", "fail": "[red]✗[/red]"}


@app.command("doctor")
def doctor(
    full: bool = typer.Option(False, "--full", help="Re-hash every blob (slow for big models)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as a JSON list."),
    url: str | None = typer.Option(None, "--url", help=URL_HELP),
) -> None:
    """Check the installation, the data dir and the server; explain what is wrong and the fix.

    Read-only: it never changes anything.

    A server that does not answer fails only when named (--url or $LLMOS_URL).

    Exit status 0 when healthy (warnings allowed), 1 when any check failed.
    """
    results = _diagnose(full, url)
    if as_json:
        rows = [dataclasses.asdict(r) for r in results]
        console.print(json.dumps(rows, indent=2, default=str), markup=False, highlight=False)
    else:
        for r in results:
            _print(r)
        _print_summary(results)
    if not is_healthy(results):
        raise typer.Exit(1)


def _diagnose(full: bool, url: str | None) -> list[CheckResult]:
    try:
        settings = cli_settings()
    except ValidationError as exc:
        return [settings_failure(exc)]
    resolved, is_explicit = resolve_url(url)
    inspection = Inspection(
        settings,
        is_full=full,
        url=resolved,
        is_url_explicit=is_explicit,
        api_key=resolve_api_key(resolved),
    )
    return diagnose(inspection)


def _print(r: CheckResult) -> None:
    line = f"{MARKS[r.status]} {escape(r.check)}: {escape(safe_text(r.message))}"
    if r.fix:
        line += f" [dim]→ fix:[/dim] {escape(safe_text(r.fix))}"
    console.print(line)


def _print_summary(results: list[CheckResult]) -> None:
    counts = {s: sum(r.status == s for r in results) for s in MARKS}
    verdict = "healthy" if is_healthy(results) else "[red]problems found[/red]"
    console.print(
        f"{counts['ok']} ok, {counts['warn']} warning(s), {counts['fail']} failure(s): {verdict}"
    )
