"""`llmos audit ...`: tail, search and verify the audit log (admins only)."""

from __future__ import annotations

import dataclasses
import json

import typer
from rich.table import Table

from llmos.cli.common import console, err_console, safe_text
from llmos.cli.credentials import API_KEY_HELP, security_session
from llmos.cli.models import StorageGroup
from llmos.security.acl import Permission
from llmos.security.audit import AuditEntry

app = typer.Typer(cls=StorageGroup, no_args_is_help=True, help="The tamper-evident audit log.")

ApiKey = typer.Option(None, "--api-key", help=API_KEY_HELP, envvar="LLMOS_API_KEY")
AsJson = typer.Option(False, "--json", help="Print JSON lines.")


def _print(entries: list[AuditEntry], as_json: bool) -> None:
    if as_json:
        for e in entries:
            console.print(json.dumps(dataclasses.asdict(e)), markup=False, highlight=False)
        return
    table = Table("SEQ", "TIME (UTC)", "ACTOR", "ACTION", "TARGET", "OUTCOME", "CLIENT", "DETAILS",
                  box=None)  # fmt: skip
    for e in entries:
        details = json.dumps(e.details, separators=(",", ":"))
        table.add_row(str(e.seq), e.ts[:19].replace("T", " "), e.actor, e.action,
                      e.target or "", e.outcome, e.client or "", safe_text(details))  # fmt: skip
    console.print(table)


@app.command("tail")
def tail(
    num_rows: int = typer.Option(20, "-n", "--lines", min=1, help="How many of the newest rows."),
    as_json: bool = AsJson,
    api_key: str | None = ApiKey,
) -> None:
    """The newest rows, oldest first."""
    with security_session(api_key, Permission.AUDIT_READ) as s:
        _print(s.audit.tail(num_rows), as_json)


@app.command("search")
def search(
    actor: str | None = typer.Option(None, help="Who (user name, or key id for auth failures)."),
    action: str | None = typer.Option(None, help="e.g. inference, key.create, user.* (prefix)."),
    outcome: str | None = typer.Option(None, help="e.g. ok, stop, insufficient_quota."),
    target: str | None = typer.Option(None, help="e.g. a model, user or key id."),
    since: str | None = typer.Option(None, help="ISO time (UTC), e.g. 2026-11-25T09:00."),
    until: str | None = typer.Option(None, help="ISO time (UTC), exclusive."),
    limit: int = typer.Option(100, min=1, help="Most rows (the newest matching)."),
    as_json: bool = AsJson,
    api_key: str | None = ApiKey,
) -> None:
    """Rows matching every filter given."""
    with security_session(api_key, Permission.AUDIT_READ) as s:
        rows = s.audit.search(actor=actor, action=action, outcome=outcome, target=target,
                              since=since, until=until, limit=limit)  # fmt: skip
    _print(rows, as_json)


@app.command("verify")
def verify(
    anchor: str | None = typer.Option(
        None, help="SEQ:HASH recorded earlier (default: the data dir's audit.anchor)."
    ),
    api_key: str | None = ApiKey,
) -> None:
    """Check the hash chain and MACs; exit 1 naming the first changed, deleted or moved row."""
    parsed: tuple[int, str] | None = None
    if anchor is not None:
        seq, _, digest = anchor.partition(":")
        if not seq.isdigit() or len(digest) != 64:
            raise typer.BadParameter("expected SEQ:HASH (HASH = 64 hex digits)")
        parsed = (int(seq), digest)
    with security_session(api_key, Permission.AUDIT_READ) as s:
        # Record the check first: it then covers its own row.
        s.record("audit.verify")
        report = s.audit.verify(parsed)
    if report.is_ok:
        console.print(
            f"audit log ok: {report.num_rows} rows; head {report.head_seq}:{report.head_hash}",
            markup=False,
        )
        return
    err_console.print(
        f"audit log FAILED at row {report.first_bad_seq}: {report.problem} "
        f"({report.num_rows} rows verified before it)",
        markup=False,
    )
    raise typer.Exit(1)
