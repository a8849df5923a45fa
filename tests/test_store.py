"""The job store on SQLite and on the machine's PostgreSQL: claims, idempotency, lifecycle."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Column, MetaData, String, Table, bindparam, func, select
from sqlalchemy.exc import DBAPIError

from stemify.db.database import Database, FastQuery
from stemify.db.schema import JobRow
from stemify.jobs.model import Job, JobSpec, JobStatus, Stage, StemFile
from stemify.jobs.rows import to_job
from stemify.jobs.store import JobStore
from stemify.keys.store import KeyStore, hash_key
from stemify.queue.registry import WorkerRegistry

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_migrate_is_idempotent(store: JobStore) -> None:
    store.db.migrate()
    store.add(Job(id="j-again", spec=JobSpec(model="tiny"), source="url", created_at=T0))
    assert store.get("j-again") is not None


def new_job(created: datetime = T0, owner: str | None = None, **kwargs: object) -> Job:
    return Job(
        id=uuid.uuid4().hex,
        spec=JobSpec(model="tiny"),
        source="upload",
        created_at=created,
        owner=owner,
        **kwargs,  # type: ignore[arg-type]
    )


def test_round_trip(store: JobStore) -> None:
    job = new_job(input_sha256="ab" * 32, webhook_url="http://x/y", input_name="Song.mp3")
    stored, created = store.add(job)
    assert created and stored is job
    again = store.get(job.id)
    assert again is not None
    assert again.spec == job.spec and again.created_at == T0 and again.owner is None
    assert again.status is JobStatus.QUEUED and again.input_name == "Song.mp3"
    assert store.get("nope") is None


def test_the_fast_read_equals_the_orm_read(store: JobStore) -> None:
    """get() bypasses the ORM (status polling); every type must decode as the ORM does."""
    job = new_job(input_sha256="cd" * 32, input_duration_s=183.4, input_size=7_340_032)
    store.add(job)
    assert store.claim(job.id, "w1", T0, T0) is not None
    stems = {"vocals": StemFile("vocals", f"jobs/{job.id}/stems/vocals.wav", 4096)}
    assert store.succeed(
        job.id, "w1", stems=stems, quality={"mixture_snr_db": 41.7}, now=T0,
        stage_seconds={"separating": 95.3}, expires_at=T0 + timedelta(days=7),
    )  # fmt: skip
    with store.db.session() as session:
        orm = to_job(session.get(JobRow, job.id))
    fast = store.get(job.id)
    assert fast == orm and fast.stems == stems and fast.expires_at == T0 + timedelta(days=7)
    assert fast.quality == {"mixture_snr_db": 41.7} and fast.progress == orm.progress


def test_a_fast_query_refuses_parameters_that_need_conversion(db: Database) -> None:
    by_time = select(JobRow.__table__.c.id).where(JobRow.__table__.c.created_at > bindparam("t"))
    with pytest.raises(ValueError, match="'t' needs conversion"):
        FastQuery(db.engine, by_time)


def test_a_fast_query_raises_sqlalchemys_errors(db: Database) -> None:
    """The API maps SQLAlchemy's OperationalError to 503: a driver's own error would be a 500."""
    missing = Table("no_such_table", MetaData(), Column("id", String))
    query = FastQuery(db.engine, select(missing.c.id).where(missing.c.id == bindparam("i")))
    with pytest.raises(DBAPIError) as raised:
        query.first(i="x")
    assert "no_such_table" in str(raised.value.orig)
    # The pool still serves the next read.
    counted = FastQuery(db.engine, select(func.count().label("n")).select_from(JobRow.__table__))
    assert isinstance((counted.first() or {})["n"], int)


def test_only_one_worker_claims(store: JobStore) -> None:
    job = new_job()
    store.add(job)
    winners: list[str] = []
    barrier = threading.Barrier(8)

    def claim(worker: str) -> None:
        barrier.wait()
        if store.claim(job.id, worker, T0, T0 - timedelta(seconds=30)) is not None:
            winners.append(worker)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    claimed = store.get(job.id)
    assert claimed is not None and claimed.worker_id == winners[0] and claimed.attempts == 1


def test_stale_job_is_reclaimed_and_the_old_worker_loses_it(store: JobStore) -> None:
    job = new_job()
    store.add(job)
    assert store.claim(job.id, "old", T0, T0 - timedelta(seconds=30))
    later = T0 + timedelta(seconds=10)
    assert store.claim(job.id, "new", later, later - timedelta(seconds=30)) is None  # fresh beat
    much_later = T0 + timedelta(minutes=5)
    taken = store.claim(job.id, "new", much_later, much_later - timedelta(seconds=30))
    assert taken is not None and taken.attempts == 2
    assert not store.heartbeat(job.id, "old", much_later)
    assert not store.set_progress(job.id, "old", Stage.SEPARATING, 50, None)
    assert not store.succeed(
        job.id, "old", stems={}, quality=None, stage_seconds={}, now=much_later,
        expires_at=much_later,
    )  # fmt: skip
    assert store.heartbeat(job.id, "new", much_later)


def test_finished_job_is_never_claimed_again(store: JobStore) -> None:
    job = new_job()
    store.add(job)
    store.claim(job.id, "w", T0, T0)
    stems = {"vocals": StemFile("vocals", f"jobs/{job.id}/stems/vocals.wav", 10)}
    assert store.succeed(
        job.id, "w", stems=stems, quality={"x": 1}, stage_seconds={"separating": 1.5}, now=T0,
        expires_at=T0 + timedelta(hours=1),
    )  # fmt: skip
    assert store.claim(job.id, "w2", T0 + timedelta(days=1), T0 + timedelta(days=1)) is None
    done = store.get(job.id)
    assert done is not None and done.status is JobStatus.SUCCEEDED and done.progress == 100
    assert done.stems == stems and done.stage_seconds == {"separating": 1.5}


def test_idempotency_key_per_owner(store: JobStore) -> None:
    first, created = store.add(new_job(owner="a", idempotency_key="k1"))
    assert created
    again, created = store.add(new_job(owner="a", idempotency_key="k1"))
    assert not created and again.id == first.id
    other, created = store.add(new_job(owner="b", idempotency_key="k1"))
    assert created and other.id != first.id
    anonymous, created = store.add(new_job(idempotency_key="k1"))
    assert created
    again, created = store.add(new_job(idempotency_key="k1"))
    assert not created and again.id == anonymous.id


def test_list_pages_newest_first_per_owner(store: JobStore) -> None:
    ids = [store.add(new_job(T0 + timedelta(seconds=i), owner="a"))[0].id for i in range(5)]
    store.add(new_job(T0, owner="b"))
    pages: list[list[str]] = []
    cursor = None
    while True:
        jobs, cursor = store.list_jobs(owner="a", cursor=cursor, limit=2)
        pages.append([j.id for j in jobs])
        if cursor is None:
            break
    assert pages == [ids[4:2:-1], ids[2:0:-1], ids[0:1]]
    everyone, _ = store.list_jobs(owner=None, all_owners=True, limit=100)
    assert len(everyone) == 6
    store.request_cancel(ids[0], T0)
    canceled, _ = store.list_jobs(owner="a", status=JobStatus.CANCELED)
    assert [j.id for j in canceled] == [ids[0]]
    with pytest.raises(ValueError, match="invalid cursor"):
        store.list_jobs(owner="a", cursor="!!!")


def test_cancel_and_retry(store: JobStore) -> None:
    queued, running = new_job(), new_job()
    store.add(queued)
    store.add(running)
    store.claim(running.id, "w", T0, T0)
    q = store.request_cancel(queued.id, T0)
    assert q is not None and q.status is JobStatus.CANCELED
    r = store.request_cancel(running.id, T0)
    assert r is not None and r.status is JobStatus.RUNNING and r.cancel_requested
    assert store.cancel_requested(running.id)
    assert store.mark_canceled(running.id, "w", T0)
    assert store.retry(running.id, T0)
    retried = store.get(running.id)
    assert retried is not None and retried.status is JobStatus.QUEUED
    assert not retried.cancel_requested and retried.error_code is None
    assert store.claim(running.id, "w2", T0, T0) is not None


def test_dedup_lookup_and_expiry(store: JobStore) -> None:
    job = new_job(input_sha256="cd" * 32)
    store.add(job)
    store.claim(job.id, "w", T0, T0)
    store.succeed(
        job.id, "w", stems={}, quality=None, stage_seconds={}, now=T0,
        expires_at=T0 + timedelta(hours=1),
    )  # fmt: skip
    params = job.spec.params_hash()
    found = store.find_reusable("cd" * 32, params, T0 + timedelta(minutes=1))
    assert found is not None and found.id == job.id
    assert store.find_reusable("cd" * 32, JobSpec(model="other").params_hash(), T0) is None
    assert store.find_reusable("cd" * 32, params, T0 + timedelta(hours=2)) is None
    assert [j.id for j in store.expired_jobs(T0 + timedelta(hours=2))] == [job.id]
    assert store.mark_expired(job.id)
    assert store.expired_jobs(T0 + timedelta(hours=2)) == []
    expired = store.get(job.id)
    assert expired is not None and expired.status is JobStatus.EXPIRED and expired.stems == {}


def test_failed_and_canceled_jobs_expire_a_ttl_after_they_ended(store: JobStore) -> None:
    failed, canceled, queued = new_job(), new_job(), new_job()
    for job in (failed, canceled, queued):
        store.add(job)
    store.claim(failed.id, "w", T0, T0)
    assert store.fail(failed.id, "w", code="storage_error", message="x", now=T0)
    assert store.request_cancel(canceled.id, T0)
    later = T0 + timedelta(hours=2)
    assert store.expired_jobs(later) == []  # no expiry of their own
    assert store.expired_jobs(later, ended_before=T0) == []  # ended at T0, not before
    swept = store.expired_jobs(later, ended_before=T0 + timedelta(seconds=1))
    assert sorted(j.id for j in swept) == sorted([failed.id, canceled.id])


def test_release_puts_a_job_back(store: JobStore) -> None:
    job = new_job()
    store.add(job)
    store.claim(job.id, "w", T0, T0)
    assert store.release(job.id, "w", T0)
    assert store.queued_ids() == [job.id]
    assert store.claim(job.id, "w2", T0, T0) is not None


def test_queue_stats_and_workers(store: JobStore) -> None:
    for i in range(3):
        store.add(new_job(T0 + timedelta(seconds=i)))
    running = new_job(T0 + timedelta(seconds=10))
    store.add(running)
    store.claim(running.id, "w", T0, T0)
    stats = store.queue_stats(T0 + timedelta(seconds=60))
    assert (stats.queued, stats.running, stats.oldest_queued_age_s) == (3, 1, 60.0)
    workers = WorkerRegistry(store.db)
    workers.seen("w1", T0, 1)
    workers.seen("w2", T0 - timedelta(minutes=10), 0)
    alive = workers.alive(T0 - timedelta(seconds=30))
    assert [w.id for w in alive] == ["w1"] and alive[0].running == 1
    workers.stopped("w1")
    assert workers.alive(T0 - timedelta(seconds=30)) == []


def test_lost_workers_are_those_that_stopped_beating_without_stopping(store: JobStore) -> None:
    workers = WorkerRegistry(store.db)
    workers.seen("beating", T0, 1)
    workers.seen("retired", T0 - timedelta(minutes=5), 0)
    workers.stopped("retired")  # a drain or the autoscaler's scale-down
    workers.seen("killed", T0 - timedelta(minutes=5), 1)
    workers.seen("long-gone", T0 - timedelta(hours=2), 1)
    stale, hour_ago = T0 - timedelta(seconds=30), T0 - timedelta(hours=1)
    assert workers.lost(stale, hour_ago) == 1  # "killed" only
    workers.seen("killed", T0, 0)  # it came back (the same id beats again)
    assert workers.lost(stale, hour_ago) == 0


def test_api_keys(db: Database) -> None:
    keys = KeyStore(db)
    keys.add("k1", "alice", hash_key("sk_secret"), "sk_secret", False, T0)
    key = keys.by_hash(hash_key("sk_secret"))
    assert key is not None and key.name == "alice" and not key.admin
    assert keys.by_hash(hash_key("wrong")) is None
    assert keys.revoke("sk_secret", T0)
    assert keys.by_hash(hash_key("sk_secret")) is None
    assert not keys.revoke("sk_secret", T0)
    assert [k.name for k in keys.all()] == ["alice"]
