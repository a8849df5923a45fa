"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26 12:09:39.627928
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import stemify.db.schema

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", stemify.db.schema.UTCDateTime(), nullable=False),
        sa.Column("revoked_at", stemify.db.schema.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=True),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("eta_s", sa.Float(), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("params_hash", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("source_url", sa.Text(), nullable=True),
        sa.Column("input_name", sa.String(length=255), nullable=True),
        sa.Column("input_key", sa.String(length=255), nullable=True),
        sa.Column("input_sha256", sa.String(length=64), nullable=True),
        sa.Column("input_size", sa.BigInteger(), nullable=True),
        sa.Column("input_duration_s", sa.Float(), nullable=True),
        sa.Column("input_format", sa.String(length=64), nullable=True),
        sa.Column("cache_hit", sa.Boolean(), nullable=False),
        sa.Column("stems", sa.JSON(), nullable=False),
        sa.Column("quality", sa.JSON(), nullable=True),
        sa.Column("stage_seconds", sa.JSON(), nullable=False),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("created_at", stemify.db.schema.UTCDateTime(), nullable=False),
        sa.Column("started_at", stemify.db.schema.UTCDateTime(), nullable=True),
        sa.Column("finished_at", stemify.db.schema.UTCDateTime(), nullable=True),
        sa.Column("expires_at", stemify.db.schema.UTCDateTime(), nullable=True),
        sa.Column("heartbeat_at", stemify.db.schema.UTCDateTime(), nullable=True),
        sa.Column("enqueued_at", stemify.db.schema.UTCDateTime(), nullable=True),
        sa.Column("worker_id", sa.String(length=64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_jobs_dedup", ["input_sha256", "params_hash", "status"], unique=False
        )
        batch_op.create_index("ix_jobs_idempotency", ["owner", "idempotency_key"], unique=True)
        batch_op.create_index("ix_jobs_owner_created", ["owner", "created_at", "id"], unique=False)
        batch_op.create_index("ix_jobs_status", ["status"], unique=False)

    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", stemify.db.schema.UTCDateTime(), nullable=False),
        sa.Column("last_seen", stemify.db.schema.UTCDateTime(), nullable=False),
        sa.Column("running", sa.Integer(), nullable=False),
        sa.Column("stopped", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:

    op.drop_table("workers")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_status")
        batch_op.drop_index("ix_jobs_owner_created")
        batch_op.drop_index("ix_jobs_idempotency")
        batch_op.drop_index("ix_jobs_dedup")

    op.drop_table("jobs")
    op.drop_table("api_keys")
