"""reservations: users.share (fair-share weight, NULL = 1) and reservations per user per model

Revision ID: 0006_reservations
Revises: 0005_history
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_reservations"
down_revision: str | None = "0005_history"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("share", sa.Float(), nullable=True))
    op.create_table(
        "reservations",
        sa.Column(
            "user_id",
            sa.Integer(),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("model", sa.String(130), primary_key=True),
        sa.Column("blocks", sa.Integer(), nullable=True),
        sa.Column("fraction", sa.Float(), nullable=True),
        sa.Column("slots", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("reservations")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("share")
