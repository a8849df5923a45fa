"""one name per limit: the key columns are named as the settings, CLI flags and /usage

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 10:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

RENAMES = [
    ("rate_per_minute", "submissions_per_minute"),
    ("read_rate_per_minute", "reads_per_minute"),
    ("max_running", "max_running_jobs"),
    ("daily_minutes", "daily_audio_minutes"),
]


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        for old, new in RENAMES:
            batch_op.alter_column(old, new_column_name=new)


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        for old, new in RENAMES:
            batch_op.alter_column(new, new_column_name=old)
