"""Users, their roles and quotas, and the `Principal` a request acts as.

A principal is an immutable snapshot taken when a key is resolved: a change to the user (disable,
new quota, new role) takes effect on the user's next request. The owner string the kernel stores
on every process is the user's name, so "own" always means `process.owner == principal.name`.
"""

from __future__ import annotations

import builtins
import enum
import math
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from llmos.errors import Conflict, InvalidRequest, NotFound
from llmos.kernel.process import Priority
from llmos.security.tables import ApiKeyRow, ModelAclRow, UserRow
from llmos.storage.db import Database
from llmos.storage.names import validate_name
from llmos.storage.schema import as_utc


class Role(enum.StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    USER = "user"
    VIEWER = "viewer"

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls(text.lower())
        except ValueError:
            allowed = ", ".join(r.value for r in cls)
            raise InvalidRequest(f"unknown role {text!r}; use one of: {allowed}") from None


@dataclass(frozen=True, slots=True)
class Quota:
    """Per-user limits; None means no limit."""

    tokens_per_day: int | None = None
    max_concurrent: int | None = None
    max_priority: Priority | None = None
    max_context: int | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: the user, the key it came with, and the limits that apply."""

    name: str
    role: Role
    user_id: int | None = None
    key_id: str | None = None
    quota: Quota = field(default_factory=Quota)
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    @property
    def is_anonymous(self) -> bool:
        return self.name == ANONYMOUS_NAME


ANONYMOUS_NAME = "anonymous"
MAX_SHARE = 1000.0  # the largest fair-share weight
# With `auth none` (loopback only) every request acts as this principal; owner "local" matches
# what the kernel used before there were users.
LOCAL = Principal(name="local", role=Role.ADMIN)
ANONYMOUS = Principal(name=ANONYMOUS_NAME, role=Role.VIEWER)


@dataclass(frozen=True, slots=True)
class UserInfo:
    """A user as `llmos users list` shows it (never with key material)."""

    id: int
    name: str
    role: Role
    is_disabled: bool
    quota: Quota
    models: tuple[str, ...]
    num_active_keys: int
    created_at: datetime
    share: float = 1.0  # fair-share weight (`llmos users set-share`)


def quota_of(row: UserRow) -> Quota:
    return Quota(
        tokens_per_day=row.tokens_per_day,
        max_concurrent=row.max_concurrent,
        max_priority=Priority.parse(row.max_priority) if row.max_priority else None,
        max_context=row.max_context,
    )


class Users:
    """Create, list, disable and set quotas, roles and model grants of users."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, name: str, role: Role | str = Role.USER, quota: Quota | None = None) -> UserInfo:
        name = validate_name(name, what="user name")
        if name in (LOCAL.name, ANONYMOUS_NAME):
            raise InvalidRequest(f"user name {name!r} is reserved")
        role = Role.parse(role) if isinstance(role, str) else role
        q = quota or Quota()
        try:
            with self.db.session() as s:
                if s.scalars(select(UserRow).where(UserRow.name == name)).first():
                    raise Conflict(f"user {name} already exists")
                row = UserRow(name=name, role=role.value, is_disabled=False)
                _apply_quota(row, q)
                s.add(row)
                s.flush()
                user_id = row.id
        except IntegrityError as e:
            raise Conflict(f"user {name} was created concurrently") from e
        return self.get(user_id)

    def get(self, name_or_id: str | int) -> UserInfo:
        with self.db.session() as s:
            row = _find(s, name_or_id)
            models = tuple(
                s.scalars(
                    select(ModelAclRow.model)
                    .where(ModelAclRow.user_id == row.id)
                    .order_by(ModelAclRow.model)
                )
            )
            keys = s.scalars(
                select(ApiKeyRow.key_id).where(
                    ApiKeyRow.user_id == row.id, ApiKeyRow.revoked_at.is_(None)
                )
            ).all()
            return _info(row, models, len(keys))

    def list(self) -> builtins.list[UserInfo]:
        with self.db.session() as s:
            ids = builtins.list(s.scalars(select(UserRow.id).order_by(UserRow.name)))
        return [self.get(i) for i in ids]

    def count(self) -> int:
        with self.db.session() as s:
            return len(s.scalars(select(UserRow.id)).all())

    def set_disabled(self, name: str, is_disabled: bool = True) -> UserInfo:
        with self.db.session() as s:
            row = _find(s, name)
            row.is_disabled = is_disabled
        return self.get(name)

    def set_role(self, name: str, role: Role | str) -> UserInfo:
        role = Role.parse(role) if isinstance(role, str) else role
        with self.db.session() as s:
            _find(s, name).role = role.value
        return self.get(name)

    def set_quota(self, name: str, **changes: int | Priority | None) -> UserInfo:
        """Change only the given quota fields; a value of 0 or None removes that limit."""
        allowed = set(Quota.__slots__)
        unknown = set(changes) - allowed
        if unknown:
            raise InvalidRequest(f"unknown quota field(s) {sorted(unknown)}")
        with self.db.session() as s:
            row = _find(s, name)
            current = quota_of(row)
            values = {k: getattr(current, k) for k in allowed}
            for key, value in changes.items():
                values[key] = None if value in (0, None) else value
            _apply_quota(row, Quota(**values))
        return self.get(name)

    def set_share(self, name: str, weight: float) -> UserInfo:
        """Set the user's fair-share weight (service is divided in proportion to weights)."""
        weight = check_share(weight)
        with self.db.session() as s:
            _find(s, name).share = None if weight == 1.0 else weight
        return self.get(name)

    def grant_model(self, name: str, model: str) -> UserInfo:
        """Allow `name` to use `model`; once a model has any grant, only grantees may use it."""
        with self.db.session() as s:
            row = _find(s, name)
            key = {"model": model, "user_id": row.id}
            if s.get(ModelAclRow, key) is None:
                s.add(ModelAclRow(**key))
        return self.get(name)

    def revoke_model(self, name: str, model: str) -> UserInfo:
        with self.db.session() as s:
            row = _find(s, name)
            grant = s.get(ModelAclRow, {"model": model, "user_id": row.id})
            if grant is not None:
                s.delete(grant)
        return self.get(name)


def check_share(weight: float) -> float:
    if not math.isfinite(weight) or not 0 < weight <= MAX_SHARE:
        raise InvalidRequest(
            f"A share must be a weight in (0, {MAX_SHARE:g}]; got {weight}.",
            param="share",
            hint="1 is everyone's default; 2 gets twice the service of 1 when both are busy",
        )
    return float(weight)


def find_user(s: Session, name_or_id: str | int) -> UserRow:
    """The row of a user by name or id, in session `s`; NotFound otherwise."""
    return _find(s, name_or_id)


def _find(s: Session, name_or_id: str | int) -> UserRow:
    if isinstance(name_or_id, int):
        row = s.get(UserRow, name_or_id)
    else:
        row = s.scalars(select(UserRow).where(UserRow.name == name_or_id.lower())).first()
    if row is None:
        raise NotFound(f"user {name_or_id} not found", hint="see `llmos users list`")
    return row


def _apply_quota(row: UserRow, q: Quota) -> None:
    for value, what in ((q.tokens_per_day, "tokens_per_day"), (q.max_concurrent, "max_concurrent")):
        if value is not None and value < 0:
            raise InvalidRequest(f"{what} must be >= 0, got {value}")
    if q.max_context is not None and q.max_context < 1:
        raise InvalidRequest(f"max_context must be >= 1, got {q.max_context}")
    row.tokens_per_day = q.tokens_per_day
    row.max_concurrent = q.max_concurrent
    row.max_priority = q.max_priority.name.lower() if q.max_priority is not None else None
    row.max_context = q.max_context


def _info(row: UserRow, models: tuple[str, ...], num_keys: int) -> UserInfo:
    return UserInfo(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        is_disabled=row.is_disabled,
        quota=quota_of(row),
        models=models,
        num_active_keys=num_keys,
        created_at=as_utc(row.created_at),
        share=row.share if row.share is not None else 1.0,
    )
