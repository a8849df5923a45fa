"""The job store: the source of truth for every job, on SQLite (WAL) or PostgreSQL.

Every state change is one conditional UPDATE, so two workers, two API processes or a worker
and the reconciler can race without a job running twice or a result being overwritten: whoever
does not match the WHERE clause simply gets ``False``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, case, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from stemify.db.database import Database, FastQuery
from stemify.db.schema import JobRow
from stemify.errors import WorkerLostError
from stemify.jobs.cursor import decode_cursor, encode_cursor
from stemify.jobs.model import Job, JobStatus, Stage, StemFile
from stemify.jobs.rows import BY_ID, job_of, row_values, stems_json, to_job


@dataclass(frozen=True)
class QueueStats:
    queued: int
    running: int
    oldest_queued_age_s: float | None


class JobStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._by_id = FastQuery(db.engine, BY_ID)  # status polling

    def _update(self, where: Any, **values: Any) -> bool:
        with self.db.session() as session:
            result = session.execute(update(JobRow).where(where).values(**values))
            return bool(result.rowcount)  # type: ignore[attr-defined]

    # ---- creating and reading jobs --------------------------------------------------------

    def add(self, job: Job) -> tuple[Job, bool]:
        """Insert ``job``; with an idempotency key already used by its owner, return that job
        instead. The flag says whether ``job`` was created."""
        row = JobRow(
            **row_values(job), params_hash=job.spec.params_hash(), enqueued_at=job.created_at
        )
        try:
            with self.db.session() as session:
                session.add(row)
        except IntegrityError:
            if job.idempotency_key is None:
                raise
            existing = self.find_idempotent(job.owner, job.idempotency_key)
            if existing is None:
                raise
            return existing, False
        return job, True

    def get(self, job_id: str) -> Job | None:
        values = self._by_id.first(job_id=job_id)
        return job_of(values) if values else None

    def find_idempotent(self, owner: str | None, key: str) -> Job | None:
        with self.db.session() as session:
            row = session.scalars(
                select(JobRow).where(JobRow.owner == (owner or ""), JobRow.idempotency_key == key)
            ).first()
            return to_job(row) if row else None

    def list_jobs(
        self,
        *,
        owner: str | None,
        all_owners: bool = False,
        status: JobStatus | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[Job], str | None]:
        """Newest first. ``owner`` None with ``all_owners`` lists everyone's (admin)."""
        query = select(JobRow).order_by(JobRow.created_at.desc(), JobRow.id.desc())
        if not all_owners:
            query = query.where(JobRow.owner == (owner or ""))
        if status is not None:
            query = query.where(JobRow.status == status.value)
        if cursor:
            created, job_id = decode_cursor(cursor)
            query = query.where(
                or_(
                    JobRow.created_at < created,
                    and_(JobRow.created_at == created, JobRow.id < job_id),
                )
            )
        with self.db.session() as session:
            rows = session.scalars(query.limit(limit + 1)).all()
            jobs = [to_job(row) for row in rows[:limit]]
        next_cursor = encode_cursor(jobs[-1]) if len(rows) > limit else None
        return jobs, next_cursor

    def find_reusable(self, input_sha256: str, params_hash: str, now: datetime) -> Job | None:
        """A succeeded, unexpired job with the same input and parameters (the dedup cache)."""
        with self.db.session() as session:
            row = session.scalars(
                select(JobRow)
                .where(
                    JobRow.input_sha256 == input_sha256,
                    JobRow.params_hash == params_hash,
                    JobRow.status == JobStatus.SUCCEEDED.value,
                    JobRow.expires_at > now,
                )
                .order_by(JobRow.finished_at.desc())
            ).first()
            return to_job(row) if row else None

    # ---- the worker's side -----------------------------------------------------------------

    def claim(
        self,
        job_id: str,
        worker_id: str,
        now: datetime,
        stale_before: datetime,
        max_losses: int | None = None,
    ) -> Job | None:
        """Take a queued job, or a running one whose worker stopped beating (counted as a lost
        worker) while fewer than ``max_losses`` were lost before; None otherwise."""
        stale = and_(JobRow.status == JobStatus.RUNNING.value, JobRow.heartbeat_at < stale_before)
        if max_losses is not None:
            stale = and_(stale, JobRow.worker_losses + 1 < max_losses)
        claimed = self._update(
            and_(
                JobRow.id == job_id,
                or_(JobRow.status == JobStatus.QUEUED.value, stale),
                JobRow.cancel_requested.is_(False),
            ),
            status=JobStatus.RUNNING.value,
            worker_id=worker_id,
            heartbeat_at=now,
            started_at=func.coalesce(JobRow.started_at, now),
            attempts=JobRow.attempts + 1,
            worker_losses=case(
                (JobRow.status == JobStatus.RUNNING.value, JobRow.worker_losses + 1),
                else_=JobRow.worker_losses,
            ),
            stage=None,
            progress=0.0,
            eta_s=None,
        )
        return self.get(job_id) if claimed else None

    def fail_lost(self, job: Job, stale_before: datetime, max_losses: int, now: datetime) -> bool:
        """Fail ``job`` (running, its worker silent) if that worker is the ``max_losses``-th
        it lost and nobody claimed it since it was read."""
        losses = job.worker_losses + 1
        error = WorkerLostError(losses)
        return losses >= max_losses and self._update(
            and_(
                self._owned(job.id, job.worker_id or ""),
                JobRow.heartbeat_at < stale_before,
                JobRow.worker_losses == job.worker_losses,
            ),
            status=JobStatus.FAILED.value,
            worker_losses=losses,
            eta_s=None,
            error_code=error.code,
            error_message=error.message,
            finished_at=now,
        )

    def _owned(self, job_id: str, worker_id: str) -> Any:
        return and_(
            JobRow.id == job_id,
            JobRow.worker_id == worker_id,
            JobRow.status == JobStatus.RUNNING.value,
        )

    def _finishable(self, job_id: str, worker_id: str | None) -> Any:
        """A worker finishes the job it owns; without a worker (dedup hit) a queued one."""
        if worker_id is not None:
            return self._owned(job_id, worker_id)
        return and_(JobRow.id == job_id, JobRow.status == JobStatus.QUEUED.value)

    def heartbeat(self, job_id: str, worker_id: str, now: datetime) -> bool:
        """False when the job is no longer this worker's (re-claimed, canceled, deleted)."""
        return self._update(self._owned(job_id, worker_id), heartbeat_at=now)

    def cancel_requested(self, job_id: str) -> bool:
        with self.db.session() as session:
            value = session.scalar(select(JobRow.cancel_requested).where(JobRow.id == job_id))
            return value is None or bool(value)  # a deleted job counts as canceled

    def set_progress(
        self, job_id: str, worker_id: str, stage: Stage, progress: float, eta_s: float | None
    ) -> bool:
        return self._update(
            self._owned(job_id, worker_id),
            stage=stage.value,
            progress=round(progress, 2),
            eta_s=eta_s,
        )

    def set_waiting(self, job_id: str, stage: Stage) -> bool:
        """Say why a queued job, still nobody's, waits (its model is being downloaded)."""
        where = and_(JobRow.id == job_id, JobRow.status == JobStatus.QUEUED.value)
        return self._update(and_(where, JobRow.stage.is_(None)), stage=stage.value)

    def set_input(
        self,
        job_id: str,
        *,
        key: str,
        sha256: str,
        size: int,
        duration_s: float,
        fmt: str,
        name: str | None = None,
    ) -> bool:
        """Record a link job's fetched input; True when its duration was not known before."""
        values: dict[str, Any] = {
            "input_key": key,
            "input_sha256": sha256,
            "input_size": size,
            "input_duration_s": duration_s,
            "input_format": fmt,
        }
        if name is not None:
            values["input_name"] = name
        # Only the first fetch learns the duration; a retried job fetches again but its
        # owner's minutes are charged once (by the caller, on True).
        if self._update(and_(JobRow.id == job_id, JobRow.input_duration_s.is_(None)), **values):
            return True
        self._update(JobRow.id == job_id, **values)
        return False

    def succeed(
        self,
        job_id: str,
        worker_id: str | None,
        *,
        stems: dict[str, StemFile],
        quality: dict[str, Any] | None,
        stage_seconds: dict[str, float],
        now: datetime,
        expires_at: datetime,
        cache_hit: bool = False,
    ) -> bool:
        return self._update(
            self._finishable(job_id, worker_id),
            status=JobStatus.SUCCEEDED.value,
            stage=None,
            progress=100.0,
            eta_s=None,
            stems=stems_json(stems),
            quality=quality,
            stage_seconds=stage_seconds,
            finished_at=now,
            expires_at=expires_at,
            cache_hit=cache_hit,
        )

    def fail(
        self, job_id: str, worker_id: str | None, *, code: str, message: str, now: datetime
    ) -> bool:
        return self._update(
            self._finishable(job_id, worker_id),
            status=JobStatus.FAILED.value,
            eta_s=None,
            error_code=code,
            error_message=message,
            finished_at=now,
        )

    def mark_canceled(self, job_id: str, worker_id: str, now: datetime) -> bool:
        return self._update(
            self._owned(job_id, worker_id),
            status=JobStatus.CANCELED.value,
            eta_s=None,
            error_code="canceled",
            error_message="the job was canceled",
            finished_at=now,
        )

    def release(self, job_id: str, worker_id: str, now: datetime) -> bool:
        """Hand a running job back to the queue (worker shutting down)."""
        return self._update(
            self._owned(job_id, worker_id),
            status=JobStatus.QUEUED.value,
            worker_id=None,
            stage=None,
            progress=0.0,
            eta_s=None,
            enqueued_at=now,
        )

    # ---- the API's side --------------------------------------------------------------------

    def request_cancel(self, job_id: str, now: datetime) -> Job | None:
        """Queued jobs are canceled at once; running ones are flagged for their worker."""
        self._update(
            and_(JobRow.id == job_id, JobRow.status == JobStatus.QUEUED.value),
            status=JobStatus.CANCELED.value,
            cancel_requested=True,
            error_code="canceled",
            error_message="the job was canceled",
            finished_at=now,
        )
        self._update(
            and_(JobRow.id == job_id, JobRow.status == JobStatus.RUNNING.value),
            cancel_requested=True,
        )
        return self.get(job_id)

    def delete(self, job_id: str) -> bool:
        with self.db.session() as session:
            result = session.execute(delete(JobRow).where(JobRow.id == job_id))
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def retry(self, job_id: str, now: datetime) -> bool:
        """A failed or canceled job goes back to the queue (operators: ``jobs retry``), its
        count of lost workers reset."""
        return self._update(
            and_(
                JobRow.id == job_id,
                JobRow.status.in_([JobStatus.FAILED.value, JobStatus.CANCELED.value]),
            ),
            status=JobStatus.QUEUED.value,
            error_code=None,
            error_message=None,
            cancel_requested=False,
            worker_id=None,
            worker_losses=0,  # on purpose: the operator gave it another chance
            stage=None,
            progress=0.0,
            finished_at=None,
            enqueued_at=now,
        )

    def mark_enqueued(self, job_id: str, now: datetime) -> None:
        self._update(JobRow.id == job_id, enqueued_at=now)

    # ---- reconciler and sweeper ------------------------------------------------------------

    def queued_ids(self, enqueued_before: datetime | None = None) -> list[str]:
        query = select(JobRow.id).where(JobRow.status == JobStatus.QUEUED.value)
        if enqueued_before is not None:
            query = query.where(JobRow.enqueued_at < enqueued_before)
        with self.db.session() as session:
            return list(session.scalars(query.order_by(JobRow.created_at)))

    def stale_running_ids(
        self, stale_before: datetime, enqueued_before: datetime | None = None
    ) -> list[str]:
        query = select(JobRow.id).where(
            JobRow.status == JobStatus.RUNNING.value, JobRow.heartbeat_at < stale_before
        )
        if enqueued_before is not None:
            query = query.where(JobRow.enqueued_at < enqueued_before)
        with self.db.session() as session:
            return list(session.scalars(query))

    def expired_jobs(self, now: datetime, ended_before: datetime | None = None) -> list[Job]:
        """Finished jobs past their expiry; with ``ended_before``, also failed and canceled
        jobs (which have no expiry) that ended before it: their input, and any stems a
        failed cleanup left, are kept no longer than a result."""
        past = JobRow.expires_at < now
        if ended_before is not None:
            unfinished = JobRow.status.in_([JobStatus.FAILED.value, JobStatus.CANCELED.value])
            past = or_(
                past,
                and_(JobRow.expires_at.is_(None), unfinished, JobRow.finished_at < ended_before),
            )
        with self.db.session() as session:
            rows = session.scalars(
                select(JobRow).where(
                    past,
                    JobRow.status.notin_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]),
                    JobRow.status != JobStatus.EXPIRED.value,
                )
            ).all()
            return [to_job(row) for row in rows]

    def mark_expired(self, job_id: str) -> bool:
        return self._update(
            and_(JobRow.id == job_id, JobRow.status != JobStatus.EXPIRED.value),
            status=JobStatus.EXPIRED.value,
            stems={},
            input_key=None,
        )

    def finished_ids(self, statuses: list[JobStatus], finished_before: datetime) -> list[str]:
        with self.db.session() as session:
            return list(
                session.scalars(
                    select(JobRow.id).where(
                        JobRow.status.in_([s.value for s in statuses]),
                        JobRow.finished_at < finished_before,
                    )
                )
            )

    def queue_stats(self, now: datetime) -> QueueStats:
        with self.db.session() as session:
            counts = dict(
                session.execute(
                    select(JobRow.status, func.count())
                    .where(JobRow.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]))
                    .group_by(JobRow.status)
                ).all()
            )
            oldest = session.scalar(
                select(func.min(JobRow.created_at)).where(JobRow.status == JobStatus.QUEUED.value)
            )
        if isinstance(oldest, datetime) and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)
        return QueueStats(
            queued=int(counts.get(JobStatus.QUEUED.value, 0)),
            running=int(counts.get(JobStatus.RUNNING.value, 0)),
            oldest_queued_age_s=(now - oldest).total_seconds() if oldest else None,
        )

    def active_count(self, owner: str | None) -> int:
        """Jobs of ``owner`` queued or running: what the running-jobs limit counts."""
        with self.db.session() as session:
            return int(
                session.scalar(
                    select(func.count()).where(
                        JobRow.owner == (owner or ""),
                        JobRow.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]),
                    )
                )
                or 0
            )
