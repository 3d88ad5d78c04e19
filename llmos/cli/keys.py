"""`llmos keys ...`: create (shown once), list, revoke API keys; rotate the master key.

Admins manage anyone's keys; other roles only their own. Every change is audited.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import typer
from rich.table import Table

from llmos.cli.common import console, err_console
from llmos.cli.credentials import (
    API_KEY_HELP,
    MASTER_KEY_ENV,
    Session,
    open_cipher,
    security_session,
)
from llmos.cli.models import StorageGroup
from llmos.errors import NotFound
from llmos.security.acl import Permission, Scope, scope_of
from llmos.security.guard import SecurityPaths
from llmos.security.keys import ApiKeys, KeyInfo

app = typer.Typer(cls=StorageGroup, no_args_is_help=True, help="API keys and the master key.")

ApiKey = typer.Option(None, "--api-key", help=API_KEY_HELP, envvar="LLMOS_API_KEY")
_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration_s(text: str) -> float:
    m = _DURATION.match(text.strip().lower())
    if not m or int(m.group(1)) == 0:
        raise typer.BadParameter(f"{text!r} is not a duration like 3600, 90m, 12h or 30d")
    return float(int(m.group(1)) * _UNIT_S[m.group(2)])


def _may_manage(s: Session, owner: str) -> None:
    if scope_of(s.principal, Permission.KEYS_MANAGE) is not Scope.ALL and owner != s.principal.name:
        # Another user's keys do not exist for you (no enumeration through this command).
        raise NotFound(f"user {owner} not found")


@app.command("create")
def create(
    user: str | None = typer.Option(None, "--user", "-u", help="Owner (default: yourself)."),
    name: str = typer.Option("default", "--name", "-n", help="A label for the key."),
    expires_in: str | None = typer.Option(None, "--expires-in", help="e.g. 3600, 90m, 12h, 30d."),
    rpm: int | None = typer.Option(None, "--rpm", help="Requests per minute (rate limit)."),
    tpm: int | None = typer.Option(None, "--tpm", help="Tokens per minute (rate limit)."),
    api_key: str | None = ApiKey,
) -> None:
    """Create a key and print it once: it is stored only as a hash and cannot be shown again."""
    with security_session(api_key, Permission.KEYS_MANAGE) as s:
        owner = (user or s.principal.name).lower()
        _may_manage(s, owner)
        new = ApiKeys(s.db).create(
            owner,
            name,
            expires_in_s=parse_duration_s(expires_in) if expires_in else None,
            requests_per_minute=rpm,
            tokens_per_minute=tpm,
        )
        s.record("key.create", new.info.key_id, user=owner, name=name, rpm=rpm, tpm=tpm)
    err_console.print(
        f"created key {new.info.key_id} for {owner}; it is shown only now:", markup=False
    )
    console.print(new.secret, markup=False)


def _row(k: KeyInfo, now: datetime) -> list[str]:
    def when(t: datetime | None) -> str:
        return t.strftime("%m-%d %H:%M") if t else "-"

    limits = f"{k.requests_per_minute or '-'}/{k.tokens_per_minute or '-'}"
    return [k.key_id, k.user, k.name, k.state(now), when(k.created_at), when(k.expires_at),
            when(k.last_used_at), limits]  # fmt: skip


@app.command("list")
def list_(
    user: str | None = typer.Option(None, "--user", "-u", help="Only this user's keys."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    api_key: str | None = ApiKey,
) -> None:
    """List keys (never their secrets): id, owner, state, expiry, last use, rpm/tpm."""
    with security_session(api_key, Permission.KEYS_MANAGE) as s:
        if scope_of(s.principal, Permission.KEYS_MANAGE) is not Scope.ALL:
            _may_manage(s, (user or s.principal.name).lower())
            user = s.principal.name
        keys = ApiKeys(s.db).list(user)
    now = datetime.now(UTC)
    if as_json:
        rows = [{**_key_json(k), "state": k.state(now)} for k in keys]
        console.print_json(json.dumps(rows))
        return
    table = Table("ID", "USER", "NAME", "STATE", "CREATED", "EXPIRES", "LAST USED", "RPM/TPM",
                  box=None)  # fmt: skip
    table.columns[0].no_wrap = True
    for k in keys:
        table.add_row(*_row(k, now))
    console.print(table)


def _key_json(k: KeyInfo) -> dict[str, object]:
    return {
        "key_id": k.key_id,
        "user": k.user,
        "name": k.name,
        "created_at": k.created_at.isoformat(),
        "expires_at": k.expires_at.isoformat() if k.expires_at else None,
        "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
        "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
        "requests_per_minute": k.requests_per_minute,
        "tokens_per_minute": k.tokens_per_minute,
    }


@app.command("revoke")
def revoke(key_id: str = typer.Argument(..., help="The key id (see `llmos keys list`)."),
           api_key: str | None = ApiKey) -> None:  # fmt: skip
    """Revoke a key: the next request that presents it gets 401."""
    with security_session(api_key, Permission.KEYS_MANAGE) as s:
        keys = ApiKeys(s.db)
        _may_manage(s, keys.get(key_id).user)
        info = keys.revoke(key_id)
        s.record("key.revoke", key_id, user=info.user)
    console.print(f"revoked {key_id} ({info.user})", markup=False)


@app.command("rotate-master")
def rotate_master(api_key: str | None = ApiKey) -> None:
    """Re-wrap every data key under a new master key (data is not re-encrypted)."""
    import os

    from llmos.security.crypto import rotate_master_key

    with security_session(api_key, Permission.SECURITY_ADMIN) as s:
        uses_env = bool(os.environ.get(MASTER_KEY_ENV))
        cipher = open_cipher(s.settings, s.db)
        rotation = rotate_master_key(cipher, SecurityPaths.of(s.settings).master_key,
                                     uses_env=uses_env)  # fmt: skip
        s.record("master_key.rotate", rotation.new_kek_id, old=rotation.old_kek_id,
                 num_rewrapped=rotation.num_rewrapped)  # fmt: skip
    console.print(
        f"master key {rotation.old_kek_id} -> {rotation.new_kek_id}: "
        f"{rotation.num_rewrapped} data keys re-wrapped",
        markup=False,
    )
    if uses_env:
        console.print(
            f"the new key is in {rotation.new_key_path}: set {MASTER_KEY_ENV} to its contents, "
            "then delete the file",
            markup=False,
        )
