"""The audio-minutes ledger: seconds of audio accepted per owner and UTC day. A ledger, not a
sum over jobs, so deleting jobs does not give their minutes back."""

from __future__ import annotations

from datetime import date

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from stemify.db.database import Database
from stemify.db.schema import AudioUsageRow


class UsageLedger:
    def __init__(self, db: Database) -> None:
        self.db = db

    def charge(self, owner: str | None, day: date, seconds: float) -> None:
        insert = pg_insert if self.db.dialect == "postgresql" else sqlite_insert
        statement = insert(AudioUsageRow).values(owner=owner or "", day=day, seconds=seconds)
        with self.db.session() as session:
            session.execute(
                statement.on_conflict_do_update(
                    index_elements=[AudioUsageRow.owner, AudioUsageRow.day],
                    set_={"seconds": AudioUsageRow.seconds + statement.excluded.seconds},
                )
            )

    def seconds(self, owner: str | None, day: date) -> float:
        """Seconds of audio accepted from ``owner`` on the UTC ``day``."""
        with self.db.session() as session:
            row = session.get(AudioUsageRow, (owner or "", day))
            return row.seconds if row else 0.0
