"""How CLI commands find their credentials and the security stores.

The API key comes from `--api-key`, else `$LLMOS_API_KEY`, else the bootstrap admin key file in
the data dir, but that file only for a server on this machine (a loopback URL): the local admin
key is never sent to another host. Security commands (`users`, `keys`, `audit`) work on the
database directly and act as the principal of that key, which the audit log records.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from llmos.cli.settings import cli_settings
from llmos.config import Settings
from llmos.errors import Unauthenticated
from llmos.security.acl import Permission, require
from llmos.security.audit import AuditLog
from llmos.security.guard import SecurityPaths, open_audit
from llmos.security.keys import ApiKeys, bootstrap_admin_key
from llmos.security.principals import Principal
from llmos.security.secretfile import read_secret_file
from llmos.storage.db import Database

if TYPE_CHECKING:
    from llmos.security.crypto import EnvelopeCipher

API_KEY_HELP = "API key (default: $LLMOS_API_KEY, else the data dir's admin.key)."
MASTER_KEY_ENV = "LLMOS_MASTER_KEY"


def settings() -> Settings:
    """Settings, with `$LLMOS_DATABASE_URL` accepted as the storage CLI accepts it."""
    return cli_settings()


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_api_key(url: str, api_key: str | None = None) -> str | None:
    """The key to send to the server at `url` (see the module docstring), or None."""
    if api_key:
        return api_key
    if env := os.environ.get("LLMOS_API_KEY"):
        return env
    if not is_loopback_url(url):
        return None
    path = SecurityPaths.of(settings()).admin_key
    try:
        return read_secret_file(path) if path.is_file() else None
    except Exception:
        return None  # an unreadable key file means "no key"; the server will say 401


@dataclass
class Session:
    """An opened database plus the principal a security command acts as."""

    settings: Settings
    db: Database
    principal: Principal
    audit: AuditLog

    def record(self, action: str, target: str | None = None, **details: object) -> None:
        self.audit.append(self.principal.name, action, target=target, client="cli", details=details)


@contextmanager
def security_session(api_key: str | None, permission: Permission) -> Iterator[Session]:
    """Open the database and resolve the acting principal, which must hold `permission`.

    With no key anywhere and an empty user table, the bootstrap admin is created first (the same
    admin.key `llmos serve` would write), so a fresh install can be set up before serving.
    """
    s = settings()
    db = Database(s.storage)
    try:
        token = api_key or os.environ.get("LLMOS_API_KEY")
        if token is None:
            path = SecurityPaths.of(s).admin_key
            if not path.exists() and s.security.bootstrap_admin_key:
                made = bootstrap_admin_key(db, path)
                if made is not None and made[1]:
                    open_audit(db, s).append("admin", "key.bootstrap", client="cli")
            if not path.exists():
                raise Unauthenticated(
                    "No API key: pass --api-key or set LLMOS_API_KEY.",
                    hint="an admin can create one with `llmos keys create --user NAME`",
                )
            token = read_secret_file(path)
        principal = ApiKeys(db).resolve(token)
        require(principal, permission)
        yield Session(s, db, principal, open_audit(db, s))
    finally:
        db.dispose()


def open_cipher(s: Settings, db: Database) -> EnvelopeCipher:
    """The cipher for user data at rest: master key from $LLMOS_MASTER_KEY, else the key file
    (created 0600 on first use)."""
    from llmos.security.crypto import EnvelopeCipher, load_keyring

    keyring = load_keyring(os.environ.get(MASTER_KEY_ENV), SecurityPaths.of(s).master_key)
    return EnvelopeCipher(db, keyring)
