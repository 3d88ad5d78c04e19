"""API keys: `llmos-<key id>-<secret>`, shown once, stored as SHA-256 of the secret part.

The key id is public (it names the key in lists, logs and the audit trail); the secret is 256
random bits, so a fast hash is enough (no password stretching needed) and comparison is constant
time. Every request resolves its key against the database, so revocation, expiry and a disabled
user take effect on the very next request. Creating and revoking a key records an event in the
same transaction (whichever face did it: the API or the CLI on the data dir).
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from llmos.errors import InvalidRequest, NotFound, Unauthenticated
from llmos.monitor.eventlog import append_event
from llmos.monitor.events import EventKind
from llmos.security.principals import Principal, Role, Users, quota_of
from llmos.security.secretfile import read_secret_file, write_secret_file
from llmos.security.tables import ApiKeyRow, UserRow
from llmos.storage.db import Database
from llmos.storage.schema import as_utc

logger = logging.getLogger(__name__)

KEY_PREFIX = "llmos"
KEY_ID_CHARS = 12
_KEY_RE = re.compile(r"^llmos-([0-9a-f]{12})-([A-Za-z0-9_-]{43})$")
# Compared against when the key id is unknown, so both failures take the same time.
_DUMMY_SHA256 = hashlib.sha256(b"llmos-no-such-key").hexdigest()
BOOTSTRAP_USER = "admin"
BOOTSTRAP_KEY_NAME = "bootstrap"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """An API key without its secret (what lists and the audit log show)."""

    key_id: str
    user: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    requests_per_minute: int | None
    tokens_per_minute: int | None

    def state(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key just created: `secret` is the full key string, available only now."""

    info: KeyInfo
    secret: str


def parse_key(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    m = _KEY_RE.match(token.strip()) if len(token) < 128 else None
    return (m.group(1), m.group(2)) if m else None


def secret_sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeys:
    """Create, list, revoke and resolve API keys."""

    def __init__(
        self,
        db: Database,
        *,
        last_used_every_s: float = 60.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.last_used_every_s = last_used_every_s
        self._now = now
        self._last_used_written: dict[str, float] = {}

    def create(
        self,
        user: str,
        name: str = "default",
        *,
        expires_in_s: float | None = None,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
    ) -> NewKey:
        """A new key for `user`; the returned secret is never stored and cannot be shown again."""
        if not 1 <= len(name) <= 64:
            raise InvalidRequest("a key name must be 1-64 characters")
        for value, what in ((requests_per_minute, "requests"), (tokens_per_minute, "tokens")):
            if value is not None and value < 1:
                raise InvalidRequest(f"{what} per minute must be >= 1, got {value}")
        if expires_in_s is not None and expires_in_s <= 0:
            raise InvalidRequest(f"expiry must be in the future, got {expires_in_s} s")
        key_id = secrets.token_hex(KEY_ID_CHARS // 2)
        secret = secrets.token_urlsafe(32)
        now = self._now()
        with self.db.session() as s:
            owner = _user(s, user)
            row = ApiKeyRow(
                key_id=key_id,
                user_id=owner.id,
                name=name,
                secret_sha256=secret_sha256(secret),
                requests_per_minute=requests_per_minute,
                tokens_per_minute=tokens_per_minute,
                created_at=now,
                expires_at=now + timedelta(seconds=expires_in_s) if expires_in_s else None,
            )
            s.add(row)
            s.flush()
            info = _info(row, owner.name)
            append_event(
                s,
                EventKind.KEY_CREATED,
                message=f"API key {key_id} ({name}) created for {owner.name}",
                key_id=key_id,
                user=owner.name,
                name=name,
            )
        logger.info("api key %s created for user %s", key_id, info.user)
        return NewKey(info=info, secret=f"{KEY_PREFIX}-{key_id}-{secret}")

    def get(self, key_id: str) -> KeyInfo:
        with self.db.session() as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFound(f"API key {key_id} not found", hint="see `llmos keys list`")
            owner = s.get(UserRow, row.user_id)
            assert owner is not None  # foreign key
            return _info(row, owner.name)

    def list(self, user: str | None = None) -> builtins.list[KeyInfo]:
        with self.db.session() as s:
            q = select(ApiKeyRow, UserRow.name).join(UserRow, UserRow.id == ApiKeyRow.user_id)
            if user is not None:
                q = q.where(UserRow.name == user.lower())
            rows = s.execute(q.order_by(UserRow.name, ApiKeyRow.created_at)).all()
            return [_info(row, name) for row, name in rows]

    def revoke(self, key_id: str) -> KeyInfo:
        """Revoke a key; the next request that presents it gets 401."""
        with self.db.session() as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFound(f"API key {key_id} not found", hint="see `llmos keys list`")
            if row.revoked_at is None:
                row.revoked_at = self._now()
                append_event(
                    s, EventKind.KEY_REVOKED, message=f"API key {key_id} revoked", key_id=key_id
                )
        logger.info("api key %s revoked", key_id)
        return self.get(key_id)

    def resolve(self, token: str) -> Principal:
        """The principal `token` stands for, or Unauthenticated (the secret is never echoed)."""
        parsed = parse_key(token)
        if parsed is None:
            raise Unauthenticated(
                "Invalid API key: not an llmos key.", hint="keys look like llmos-<id>-<secret>"
            )
        key_id, secret = parsed
        now = self._now()
        with self.db.session() as s:
            row = s.get(ApiKeyRow, key_id)
            stored = row.secret_sha256 if row is not None else _DUMMY_SHA256
            matches = hmac.compare_digest(stored, secret_sha256(secret))
            if row is None or not matches:
                raise Unauthenticated("Invalid API key.")
            if row.revoked_at is not None:
                raise Unauthenticated(f"API key {key_id} has been revoked.", code="key_revoked")
            if row.expires_at is not None and as_utc(row.expires_at) <= now:
                raise Unauthenticated(f"API key {key_id} has expired.", code="key_expired")
            owner = s.get(UserRow, row.user_id)
            assert owner is not None  # foreign key
            if owner.is_disabled:
                raise Unauthenticated(
                    f"The user of API key {key_id} is disabled.", code="user_disabled"
                )
            self._touch(row, now)
            return Principal(
                name=owner.name,
                role=Role(owner.role),
                user_id=owner.id,
                key_id=key_id,
                quota=quota_of(owner),
                requests_per_minute=row.requests_per_minute,
                tokens_per_minute=row.tokens_per_minute,
            )

    def _touch(self, row: ApiKeyRow, now: datetime) -> None:
        # At most one last_used_at write per key per interval: a write per request would make
        # every request a writer.
        mono = time.monotonic()
        last = self._last_used_written.get(row.key_id)
        if last is None or mono - last >= self.last_used_every_s:
            row.last_used_at = now
            self._last_used_written[row.key_id] = mono


def bootstrap_admin_key(db: Database, path: Path) -> tuple[Path, bool] | None:
    """Make sure `path` holds a working admin key; returns (path, created) or None.

    On a fresh database this creates user `admin` and its first key. If the file is missing or no
    longer works (revoked, database reset), a new key is issued to user `admin` if that user is
    still an enabled admin; otherwise nothing is written (None).
    """
    keys = ApiKeys(db)
    if path.exists():
        try:
            if keys.resolve(read_secret_file(path)).role is Role.ADMIN:
                return path, False
        except Unauthenticated:
            logger.warning("the admin key file %s no longer works; issuing a new key", path.name)
    users = Users(db)
    if users.count() == 0:
        users.add(BOOTSTRAP_USER, Role.ADMIN)
    try:
        admin = users.get(BOOTSTRAP_USER)
    except NotFound:
        return None
    if admin.role is not Role.ADMIN or admin.is_disabled:
        return None
    new = keys.create(BOOTSTRAP_USER, BOOTSTRAP_KEY_NAME)
    write_secret_file(path, new.secret)
    return path, True


def _user(s: Session, name: str) -> UserRow:
    row = s.scalars(select(UserRow).where(UserRow.name == name.lower())).first()
    if row is None:
        raise NotFound(f"user {name} not found", hint="add it with `llmos users add`")
    return row


def _info(row: ApiKeyRow, user: str) -> KeyInfo:
    return KeyInfo(
        key_id=row.key_id,
        user=user,
        name=row.name,
        created_at=as_utc(row.created_at),
        expires_at=as_utc(row.expires_at) if row.expires_at else None,
        revoked_at=as_utc(row.revoked_at) if row.revoked_at else None,
        last_used_at=as_utc(row.last_used_at) if row.last_used_at else None,
        requests_per_minute=row.requests_per_minute,
        tokens_per_minute=row.tokens_per_minute,
    )
