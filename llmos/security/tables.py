"""Security tables on the storage `Base`, as created by migration `0002_security`.

Secrets never reach these tables: API keys are stored as the SHA-256 of their secret part, data
keys only wrapped by the master key (which lives outside the database), and audit rows carry a
MAC whose key also lives outside it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from llmos.storage.schema import Base, utcnow


class UserRow(Base):
    """One user: a role, a disabled flag and quotas (NULL = no limit)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    is_disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    tokens_per_day: Mapped[int | None] = mapped_column(BigInteger)
    max_concurrent: Mapped[int | None] = mapped_column()
    max_priority: Mapped[str | None] = mapped_column(String(16))
    max_context: Mapped[int | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    share: Mapped[float | None] = mapped_column(Float)  # fair-share weight; NULL = 1 (0006)


class ReservationRow(Base):
    """A guaranteed minimum of KV blocks (`blocks`, or `fraction` of the pool) and running
    slots for one user on one model (migration 0006_reservations)."""

    __tablename__ = "reservations"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    model: Mapped[str] = mapped_column(String(130), primary_key=True)
    blocks: Mapped[int | None] = mapped_column()
    fraction: Mapped[float | None] = mapped_column(Float)
    slots: Mapped[int] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKeyRow(Base):
    """One API key: its public id, its owner and the SHA-256 of its secret part."""

    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    secret_sha256: Mapped[str] = mapped_column(String(64))
    requests_per_minute: Mapped[int | None] = mapped_column()
    tokens_per_minute: Mapped[int | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ModelAclRow(Base):
    """A grant of one model to one user; a model with no grants is open to every user."""

    __tablename__ = "model_acl"

    model: Mapped[str] = mapped_column(String(130), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )


class TokenUsageRow(Base):
    """Tokens (prompt + completion) a user consumed on one UTC day."""

    __tablename__ = "token_usage"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    num_tokens: Mapped[int] = mapped_column(BigInteger)


class AuditRow(Base):
    """One audit record; `hash` chains it to the row before, `mac` seals it with the audit key."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    ts: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str | None] = mapped_column(String(255))
    outcome: Mapped[str] = mapped_column(String(32))
    client: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    mac: Mapped[str] = mapped_column(String(64))


class DataKeyRow(Base):
    """The data key (DEK) of one encrypted object, wrapped by the master key `kek_id`."""

    __tablename__ = "data_keys"

    object_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(32))
    kek_id: Mapped[str] = mapped_column(String(16))
    wrapped_dek: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
