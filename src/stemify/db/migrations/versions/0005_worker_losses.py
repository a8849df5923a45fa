"""Revision 0005 (after 0004, 2026-12-01): jobs.worker_losses, how often a job's worker stopped
beating while running it; at STEMIFY_MAX_ATTEMPTS the job fails (worker_lost) instead of being
re-run once more."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("worker_losses", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("worker_losses")
