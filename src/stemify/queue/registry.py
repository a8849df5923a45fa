"""The workers consuming the queue: each process beats a row here from its maintenance loop,
so ``/health``, ``/ready`` and the metrics know which workers are alive and how busy."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update

from stemify.db.database import Database
from stemify.db.schema import WorkerRow


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    hostname: str
    pid: int
    last_seen: datetime
    running: int
    models: tuple[str, ...] | None = None  # installed where it runs; None: not reported


class WorkerRegistry:
    def __init__(self, db: Database) -> None:
        self.db = db

    def seen(
        self, worker_id: str, now: datetime, running: int, models: list[str] | None = None
    ) -> None:
        with self.db.session() as session:
            row = session.get(WorkerRow, worker_id)
            if row is None:
                session.add(
                    WorkerRow(
                        id=worker_id,
                        hostname=socket.gethostname(),
                        pid=os.getpid(),
                        started_at=now,
                        last_seen=now,
                        running=running,
                        models=models,
                    )
                )
            else:
                row.last_seen, row.running, row.stopped = now, running, False
                row.models = models

    def stopped(self, worker_id: str) -> None:
        with self.db.session() as session:
            session.execute(update(WorkerRow).where(WorkerRow.id == worker_id).values(stopped=True))

    def alive(self, seen_after: datetime) -> list[WorkerInfo]:
        with self.db.session() as session:
            rows = session.scalars(
                select(WorkerRow).where(
                    WorkerRow.last_seen > seen_after, WorkerRow.stopped.is_(False)
                )
            ).all()
            return [
                WorkerInfo(
                    r.id,
                    r.hostname,
                    r.pid,
                    r.last_seen,
                    r.running,
                    tuple(r.models) if r.models is not None else None,
                )
                for r in rows
            ]

    def lost(self, seen_before: datetime, seen_after: datetime) -> int:
        """Workers whose last beat fell between ``seen_after`` and ``seen_before`` and that never
        said they stopped: killed, out of memory, their machine gone. A worker the autoscaler
        retired, or a SIGTERM drained, marks itself stopped and is not counted."""
        with self.db.session() as session:
            count = session.scalar(
                select(func.count())
                .select_from(WorkerRow)
                .where(
                    WorkerRow.last_seen > seen_after,
                    WorkerRow.last_seen <= seen_before,
                    WorkerRow.stopped.is_(False),
                )
            )
            return int(count or 0)
