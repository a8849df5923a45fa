"""API keys: created and revoked by operators (``stemify keys``), looked up by the hash of the
secret on every request. Only the hash is stored; the secret is shown once."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import ColumnElement, and_, or_, select, update

from stemify.db.database import Database
from stemify.db.schema import ApiKeyRow
from stemify.keys.limits import LIMIT_NAMES, KeyLimits


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    prefix: str
    admin: bool
    created_at: datetime
    revoked_at: datetime | None
    limits: KeyLimits = field(default_factory=KeyLimits)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _to_key(row: ApiKeyRow) -> ApiKey:
    limits = KeyLimits(**{name: getattr(row, name) for name in LIMIT_NAMES})
    return ApiKey(row.id, row.name, row.prefix, row.admin, row.created_at, row.revoked_at, limits)


def _active(key_id_or_prefix: str) -> ColumnElement[bool]:
    """The unrevoked key with this id or prefix (as ``keys list`` shows it)."""
    return and_(
        or_(ApiKeyRow.id == key_id_or_prefix, ApiKeyRow.prefix == key_id_or_prefix),
        ApiKeyRow.revoked_at.is_(None),
    )


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(
        self,
        key_id: str,
        name: str,
        key_hash: str,
        prefix: str,
        admin: bool,
        now: datetime,
        limits: KeyLimits | None = None,
    ) -> None:
        with self.db.session() as session:
            session.add(
                ApiKeyRow(
                    id=key_id,
                    name=name,
                    key_hash=key_hash,
                    prefix=prefix,
                    admin=admin,
                    created_at=now,
                    **dataclasses.asdict(limits or KeyLimits()),
                )
            )

    def update_limits(
        self, key_id_or_prefix: str, changes: dict[str, int | float | None]
    ) -> ApiKey | None:
        """Set some of a key's limits (None: back to the default); the key, or None when no
        active key matches."""
        unknown = set(changes) - set(LIMIT_NAMES)
        if unknown:
            raise ValueError(f"not key limits: {', '.join(sorted(unknown))}")
        with self.db.session() as session:
            row = session.scalars(select(ApiKeyRow).where(_active(key_id_or_prefix))).first()
            if row is None:
                return None
            for name, value in changes.items():
                setattr(row, name, value)
            session.flush()
            return _to_key(row)

    def by_hash(self, key_hash: str) -> ApiKey | None:
        with self.db.session() as session:
            row = session.scalars(
                select(ApiKeyRow).where(
                    ApiKeyRow.key_hash == key_hash, ApiKeyRow.revoked_at.is_(None)
                )
            ).first()
            return _to_key(row) if row else None

    def all(self) -> list[ApiKey]:
        with self.db.session() as session:
            rows = session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at))
            return [_to_key(row) for row in rows]

    def revoke(self, key_id_or_prefix: str, now: datetime) -> bool:
        with self.db.session() as session:
            result = session.execute(
                update(ApiKeyRow).where(_active(key_id_or_prefix)).values(revoked_at=now)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]
