"""Tables of the metadata database, as SQLAlchemy 2 declarative classes.

These classes describe the schema at the newest migration; migrations under `migrations/versions/`
create it (never `metadata.create_all`). A stored model is one `models` row plus its
`model_files` rows, written in one transaction after every blob they name is on disk, so a model
is visible iff it is complete. Other subsystems add their tables by new migrations, and may
declare their classes on this same `Base`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class ModelRow(Base):
    """One `name:tag` and its manifest; files are in `ModelFileRow`."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "tag", name="uq_models_name_tag"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    tag: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(16))
    architecture: Mapped[str] = mapped_column(String(128))
    parameters: Mapped[int] = mapped_column(BigInteger)
    quantization: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    parent: Mapped[str | None] = mapped_column(String(130))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    tokenizer: Mapped[dict[str, Any]] = mapped_column(JSON)
    chat_template: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The model's sampling defaults (a ModelProfile's set fields); NULL: none shipped.
    profile: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    files: Mapped[list[ModelFileRow]] = relationship(
        back_populates="model",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="ModelFileRow.path",
        lazy="selectin",
    )


class ModelFileRow(Base):
    """One file of a model (a GGUF file, or one file of an HF folder) -> its blob digest."""

    __tablename__ = "model_files"

    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    path: Mapped[str] = mapped_column(String(255), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    digest: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)

    model: Mapped[ModelRow] = relationship(back_populates="files")


class DatasetRow(Base):
    """One named dataset: a JSONL blob and what validation counted in it."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    format: Mapped[str] = mapped_column(String(16))
    num_records: Mapped[int] = mapped_column(BigInteger)
    num_tokens: Mapped[int] = mapped_column(BigInteger)
    token_count_method: Mapped[str] = mapped_column(String(128))
    digest: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
