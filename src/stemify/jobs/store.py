"""The job store: the source of truth for every job, on SQLite (WAL) or PostgreSQL.

Every state change is one conditional UPDATE, so two workers, two API processes or a worker
and the reconciler can race without a job running twice or a result being overwritten: whoever
does not match the WHERE clause simply gets ``False``.
"""

from __future__ import annotations

import base64
import dataclasses
import fcntl
import hashlib
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Engine,
    and_,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from stemify.jobs.model import Job, JobSpec, JobStatus, Stage, StemFile
from stemify.jobs.schema import ApiKeyRow, AudioUsageRow, JobRow, WorkerRow

MIGRATIONS = Path(__file__).parent / "migrations"


def now_utc() -> datetime:
    return datetime.now(UTC)


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL lets readers (the API) work while a writer (a worker) commits.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _to_job(row: JobRow) -> Job:
    return Job(
        id=row.id,
        owner=row.owner or None,
        spec=JobSpec.from_dict(row.spec),
        source=row.source,  # type: ignore[arg-type]
        created_at=row.created_at,
        status=JobStatus(row.status),
        stage=Stage(row.stage) if row.stage else None,
        progress=row.progress,
        eta_s=row.eta_s,
        error_code=row.error_code,
        error_message=row.error_message,
        source_url=row.source_url,
        input_name=row.input_name,
        input_key=row.input_key,
        input_sha256=row.input_sha256,
        input_size=row.input_size,
        input_duration_s=row.input_duration_s,
        input_format=row.input_format,
        cache_hit=row.cache_hit,
        stems={name: StemFile(name, s["key"], s["size"]) for name, s in (row.stems or {}).items()},
        quality=row.quality,
        stage_seconds=dict(row.stage_seconds or {}),
        webhook_url=row.webhook_url,
        idempotency_key=row.idempotency_key,
        started_at=row.started_at,
        finished_at=row.finished_at,
        expires_at=row.expires_at,
        heartbeat_at=row.heartbeat_at,
        worker_id=row.worker_id,
        attempts=row.attempts,
        cancel_requested=row.cancel_requested,
    )


def _stems_json(stems: dict[str, StemFile]) -> dict[str, Any]:
    return {name: {"key": s.key, "size": s.size} for name, s in stems.items()}


@dataclass(frozen=True)
class KeyLimits:
    """A key's own limits; None: the settings' default."""

    rate_per_minute: int | None = None
    read_rate_per_minute: int | None = None
    max_running: int | None = None
    daily_minutes: float | None = None


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    prefix: str
    admin: bool
    created_at: datetime
    revoked_at: datetime | None
    limits: KeyLimits = KeyLimits()


@dataclass(frozen=True)
class QueueStats:
    queued: int
    running: int
    oldest_queued_age_s: float | None


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    hostname: str
    pid: int
    last_seen: datetime
    running: int


def _encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, job_id = raw.split("|", 1)
        return datetime.fromisoformat(created), job_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("invalid cursor") from exc


class JobStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def from_url(cls, url: str) -> JobStore:
        return cls(_engine(url))

    def close(self) -> None:
        self.engine.dispose()

    # ---- schema --------------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the newest migration; safe when several processes start."""
        with self._migration_lock(), self.engine.begin() as connection:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    @contextmanager
    def _migration_lock(self) -> Iterator[None]:
        if self.engine.dialect.name == "postgresql":
            with self.engine.connect() as connection:
                connection.execute(text("SELECT pg_advisory_lock(7274001)"))
                try:
                    yield
                finally:
                    connection.execute(text("SELECT pg_advisory_unlock(7274001)"))
                    connection.commit()
            return
        database = self.engine.url.database
        if not database or database == ":memory:":
            yield
            return
        with open(f"{database}.migrate-lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def _update(self, connection_where: Any, **values: Any) -> bool:
        with self._session() as session:
            result = session.execute(update(JobRow).where(connection_where).values(**values))
            return bool(result.rowcount)  # type: ignore[attr-defined]

    # ---- creating and reading jobs --------------------------------------------------------

    def add(self, job: Job) -> tuple[Job, bool]:
        """Insert ``job``; with an idempotency key already used by its owner, return that job
        instead. The flag says whether ``job`` was created."""
        row = JobRow(
            id=job.id,
            owner=job.owner or "",
            status=job.status.value,
            stage=job.stage.value if job.stage else None,
            progress=job.progress,
            spec=job.spec.to_dict(),
            params_hash=job.spec.params_hash(),
            source=job.source,
            source_url=job.source_url,
            input_name=job.input_name,
            input_key=job.input_key,
            input_sha256=job.input_sha256,
            input_size=job.input_size,
            input_duration_s=job.input_duration_s,
            input_format=job.input_format,
            cache_hit=job.cache_hit,
            stems=_stems_json(job.stems),
            quality=job.quality,
            stage_seconds=job.stage_seconds,
            webhook_url=job.webhook_url,
            idempotency_key=job.idempotency_key,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            expires_at=job.expires_at,
            enqueued_at=job.created_at,
            attempts=job.attempts,
        )
        try:
            with self._session() as session:
                session.add(row)
                session.flush()  # a replayed idempotency key fails here, before charging
                if job.input_duration_s is not None:
                    self._charge(session, job.owner, job.created_at.date(), job.input_duration_s)
        except IntegrityError:
            if job.idempotency_key is None:
                raise
            existing = self.find_idempotent(job.owner, job.idempotency_key)
            if existing is None:
                raise
            return existing, False
        return job, True

    def get(self, job_id: str) -> Job | None:
        with self._session() as session:
            row = session.get(JobRow, job_id)
            return _to_job(row) if row else None

    def find_idempotent(self, owner: str | None, key: str) -> Job | None:
        with self._session() as session:
            row = session.scalars(
                select(JobRow).where(JobRow.owner == (owner or ""), JobRow.idempotency_key == key)
            ).first()
            return _to_job(row) if row else None

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
            created, job_id = _decode_cursor(cursor)
            query = query.where(
                or_(
                    JobRow.created_at < created,
                    and_(JobRow.created_at == created, JobRow.id < job_id),
                )
            )
        with self._session() as session:
            rows = session.scalars(query.limit(limit + 1)).all()
            jobs = [_to_job(row) for row in rows[:limit]]
        next_cursor = _encode_cursor(jobs[-1]) if len(rows) > limit else None
        return jobs, next_cursor

    def find_reusable(self, input_sha256: str, params_hash: str, now: datetime) -> Job | None:
        """A succeeded, unexpired job with the same input and parameters (the dedup cache)."""
        with self._session() as session:
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
            return _to_job(row) if row else None

    # ---- the worker's side -----------------------------------------------------------------

    def claim(
        self, job_id: str, worker_id: str, now: datetime, stale_before: datetime
    ) -> Job | None:
        """Take a queued job, or a running one whose worker stopped beating; None otherwise."""
        claimable = or_(
            JobRow.status == JobStatus.QUEUED.value,
            and_(JobRow.status == JobStatus.RUNNING.value, JobRow.heartbeat_at < stale_before),
        )
        claimed = self._update(
            and_(JobRow.id == job_id, claimable, JobRow.cancel_requested.is_(False)),
            status=JobStatus.RUNNING.value,
            worker_id=worker_id,
            heartbeat_at=now,
            started_at=func.coalesce(JobRow.started_at, now),
            attempts=JobRow.attempts + 1,
            stage=None,
            progress=0.0,
            eta_s=None,
        )
        return self.get(job_id) if claimed else None

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
        with self._session() as session:
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
        values: dict[str, Any] = {
            "input_key": key,
            "input_sha256": sha256,
            "input_size": size,
            "input_duration_s": duration_s,
            "input_format": fmt,
        }
        if name is not None:
            values["input_name"] = name
        with self._session() as session:
            # A link job's audio counts towards its owner's daily minutes once its duration is
            # known, exactly once (a retried job fetches again but is not charged again).
            first = session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.input_duration_s.is_(None))
                .values(**values)
                .returning(JobRow.owner)
            ).first()
            if first is not None:
                self._charge(session, first[0], now_utc().date(), duration_s)
                return True
        return self._update(JobRow.id == job_id, **values)

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
            stems=_stems_json(stems),
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
        with self._session() as session:
            result = session.execute(delete(JobRow).where(JobRow.id == job_id))
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def retry(self, job_id: str, now: datetime) -> bool:
        """A failed or canceled job goes back to the queue (operators: ``jobs retry``)."""
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
        with self._session() as session:
            return list(session.scalars(query.order_by(JobRow.created_at)))

    def stale_running_ids(
        self, stale_before: datetime, enqueued_before: datetime | None = None
    ) -> list[str]:
        query = select(JobRow.id).where(
            JobRow.status == JobStatus.RUNNING.value, JobRow.heartbeat_at < stale_before
        )
        if enqueued_before is not None:
            query = query.where(JobRow.enqueued_at < enqueued_before)
        with self._session() as session:
            return list(session.scalars(query))

    def expired_jobs(self, now: datetime) -> list[Job]:
        with self._session() as session:
            rows = session.scalars(
                select(JobRow).where(
                    JobRow.expires_at < now,
                    JobRow.status.notin_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]),
                    JobRow.status != JobStatus.EXPIRED.value,
                )
            ).all()
            return [_to_job(row) for row in rows]

    def mark_expired(self, job_id: str) -> bool:
        return self._update(
            and_(JobRow.id == job_id, JobRow.status != JobStatus.EXPIRED.value),
            status=JobStatus.EXPIRED.value,
            stems={},
            input_key=None,
        )

    def finished_ids(self, statuses: list[JobStatus], finished_before: datetime) -> list[str]:
        with self._session() as session:
            return list(
                session.scalars(
                    select(JobRow.id).where(
                        JobRow.status.in_([s.value for s in statuses]),
                        JobRow.finished_at < finished_before,
                    )
                )
            )

    def queue_stats(self, now: datetime) -> QueueStats:
        with self._session() as session:
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

    # ---- quotas ----------------------------------------------------------------------------

    def active_count(self, owner: str | None) -> int:
        """Jobs of ``owner`` queued or running: what the running-jobs limit counts."""
        with self._session() as session:
            return int(
                session.scalar(
                    select(func.count()).where(
                        JobRow.owner == (owner or ""),
                        JobRow.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]),
                    )
                )
                or 0
            )

    def audio_seconds(self, owner: str | None, day: date) -> float:
        """Seconds of audio accepted from ``owner`` on the UTC ``day``."""
        with self._session() as session:
            row = session.get(AudioUsageRow, (owner or "", day))
            return row.seconds if row else 0.0

    def _charge(self, session: Session, owner: str | None, day: date, seconds: float) -> None:
        insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        statement = insert(AudioUsageRow).values(owner=owner or "", day=day, seconds=seconds)
        session.execute(
            statement.on_conflict_do_update(
                index_elements=[AudioUsageRow.owner, AudioUsageRow.day],
                set_={"seconds": AudioUsageRow.seconds + statement.excluded.seconds},
            )
        )

    # ---- workers ---------------------------------------------------------------------------

    def worker_seen(self, worker_id: str, now: datetime, running: int) -> None:
        with self._session() as session:
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
                    )
                )
            else:
                row.last_seen, row.running, row.stopped = now, running, False

    def worker_stopped(self, worker_id: str) -> None:
        with self._session() as session:
            session.execute(update(WorkerRow).where(WorkerRow.id == worker_id).values(stopped=True))

    def workers_alive(self, seen_after: datetime) -> list[WorkerInfo]:
        with self._session() as session:
            rows = session.scalars(
                select(WorkerRow).where(
                    WorkerRow.last_seen > seen_after, WorkerRow.stopped.is_(False)
                )
            ).all()
            return [WorkerInfo(r.id, r.hostname, r.pid, r.last_seen, r.running) for r in rows]

    # ---- API keys ----------------------------------------------------------------------------

    def add_key(
        self,
        key_id: str,
        name: str,
        key_hash: str,
        prefix: str,
        admin: bool,
        now: datetime,
        limits: KeyLimits | None = None,
    ) -> None:
        with self._session() as session:
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

    def update_key_limits(
        self, key_id_or_prefix: str, changes: dict[str, int | float | None]
    ) -> ApiKey | None:
        """Set some of a key's limits (None: back to the default); the key, or None when no
        active key matches."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(KeyLimits)}
        if unknown:
            raise ValueError(f"not key limits: {', '.join(sorted(unknown))}")
        with self._session() as session:
            row = session.scalars(
                select(ApiKeyRow).where(
                    or_(ApiKeyRow.id == key_id_or_prefix, ApiKeyRow.prefix == key_id_or_prefix),
                    ApiKeyRow.revoked_at.is_(None),
                )
            ).first()
            if row is None:
                return None
            for name, value in changes.items():
                setattr(row, name, value)
            session.flush()
            return _to_key(row)

    def key_by_hash(self, key_hash: str) -> ApiKey | None:
        with self._session() as session:
            row = session.scalars(
                select(ApiKeyRow).where(
                    ApiKeyRow.key_hash == key_hash, ApiKeyRow.revoked_at.is_(None)
                )
            ).first()
            return _to_key(row) if row else None

    def api_keys(self) -> list[ApiKey]:
        with self._session() as session:
            return [
                _to_key(r)
                for r in session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at))
            ]

    def revoke_key(self, key_id_or_prefix: str, now: datetime) -> bool:
        with self._session() as session:
            result = session.execute(
                update(ApiKeyRow)
                .where(
                    or_(ApiKeyRow.id == key_id_or_prefix, ApiKeyRow.prefix == key_id_or_prefix),
                    ApiKeyRow.revoked_at.is_(None),
                )
                .values(revoked_at=now)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]


def _to_key(row: ApiKeyRow) -> ApiKey:
    limits = KeyLimits(
        rate_per_minute=row.rate_per_minute,
        read_rate_per_minute=row.read_rate_per_minute,
        max_running=row.max_running,
        daily_minutes=row.daily_minutes,
    )
    return ApiKey(row.id, row.name, row.prefix, row.admin, row.created_at, row.revoked_at, limits)


def stale_cutoff(now: datetime, timeout_s: float) -> datetime:
    return now - timedelta(seconds=timeout_s)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
