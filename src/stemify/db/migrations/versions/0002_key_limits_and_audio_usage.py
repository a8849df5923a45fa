"""per-key limits and the daily audio usage ledger

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 10:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rate_per_minute", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("read_rate_per_minute", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("max_running", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("daily_minutes", sa.Float(), nullable=True))
    op.create_table(
        "audio_usage",
        sa.Column("owner", sa.String(length=32), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("owner", "day"),
    )


def downgrade() -> None:
    op.drop_table("audio_usage")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("daily_minutes")
        batch_op.drop_column("max_running")
        batch_op.drop_column("read_rate_per_minute")
        batch_op.drop_column("rate_per_minute")
