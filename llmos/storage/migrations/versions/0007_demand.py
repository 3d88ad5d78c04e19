"""demand: per-model demand windows (requests, tokens) and admin pins of resident models

Revision ID: 0007_demand
Revises: 0006_reservations
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_demand"
down_revision: str | None = "0006_reservations"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_demand",
        sa.Column("model", sa.String(130), primary_key=True),
        sa.Column("window_start_s", sa.BigInteger(), primary_key=True),
        sa.Column("num_requests", sa.BigInteger(), nullable=False),
        sa.Column("num_tokens", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_model_demand_window", "model_demand", ["window_start_s"])
    op.create_table(
        "model_pins",
        sa.Column("model", sa.String(130), primary_key=True),
        sa.Column("pinned_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("model_pins")
    op.drop_table("model_demand")
