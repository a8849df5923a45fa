"""Revision 0003 (after 0002, 2026-12-01): one name per limit. The key columns are named as
the settings, the `stemify keys` flags and the /usage fields are."""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"

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
