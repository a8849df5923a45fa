"""The one clock every store, worker and route reads: aware UTC datetimes."""

from __future__ import annotations

from datetime import UTC, datetime


def now_utc() -> datetime:
    return datetime.now(UTC)
