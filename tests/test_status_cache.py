"""The status-poll cache (``jobs.recent``, ``STEMIFY_JOB_CACHE_S``): a job polled again within
its age comes from memory, a change this process makes shows at once, another process's
change within the age, and nothing else is ever answered (a deleted job is 404 at once, a
missing one is never remembered, another key's job stays hidden)."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from support.live import add_key, live_app, settings_for

from stemify.clock import now_utc
from stemify.db.database import Database
from stemify.jobs.model import Job, JobSpec, JobStatus
from stemify.jobs.recent import RecentJobs
from stemify.jobs.store import JobStore


def new_job(owner: str | None = None) -> Job:
    return Job(
        id=uuid.uuid4().hex,
        spec=JobSpec(model="tiny"),
        source="url",
        created_at=now_utc(),
        owner=owner,
    )


class Counted:
    """The store's own read, counted."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.reads = 0

    def get(self, job_id: str) -> Job | None:
        self.reads += 1
        return self.store.get(job_id)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ---- the cache, in-process ----------------------------------------------------------------------


def assert_read_again(recent: RecentJobs, read: Counted, job_id: str) -> None:
    """The kept job is gone: the next poll reads the store, and sees it canceled."""
    assert recent.fresh(job_id) is None
    again = recent.get(job_id)
    assert again is not None and again.status is JobStatus.CANCELED and read.reads == 2


@pytest.mark.unit
def test_a_poll_within_the_age_is_not_read_again(store: JobStore) -> None:
    job, _ = store.add(new_job())
    read, clock = Counted(store), Clock()
    recent = RecentJobs(read, 0.5, clock=clock)
    first = recent.get(job.id)
    assert first is not None and first.status is JobStatus.QUEUED
    assert recent.get(job.id) is first and recent.fresh(job.id) is first and read.reads == 1
    store.request_cancel(job.id, now_utc())  # another process: nobody tells this one
    clock.now += 0.49
    assert recent.get(job.id) is first and read.reads == 1
    clock.now += 0.02
    assert_read_again(recent, read, job.id)


@pytest.mark.unit
def test_forget_makes_the_next_poll_read_the_store(store: JobStore) -> None:
    job, _ = store.add(new_job())
    read = Counted(store)
    recent = RecentJobs(read, 60.0, clock=Clock())
    recent.get(job.id)
    store.request_cancel(job.id, now_utc())
    recent.forget(job.id)
    assert_read_again(recent, read, job.id)


@pytest.mark.unit
def test_a_read_that_overlapped_a_change_is_not_kept(store: JobStore) -> None:
    job, _ = store.add(new_job())
    recent: RecentJobs

    class ReadThenChange:
        def get(self, job_id: str) -> Job | None:
            before = store.get(job_id)  # the state before the change...
            store.request_cancel(job_id, now_utc())
            recent.forget(job_id)  # ...which this process announces while the read is out
            return before

    recent = RecentJobs(ReadThenChange(), 60.0, clock=Clock())
    stale = recent.get(job.id)
    assert stale is not None and stale.status is JobStatus.QUEUED  # answered once...
    assert recent.fresh(job.id) is None  # ...but never again


@pytest.mark.unit
def test_missing_jobs_are_never_remembered_and_age_zero_reads_every_time(store: JobStore) -> None:
    read = Counted(store)
    recent = RecentJobs(read, 60.0, clock=Clock())
    assert recent.get("nope") is None and recent.get("nope") is None and read.reads == 2
    job, _ = store.add(new_job())
    uncached = RecentJobs(read, 0.0, clock=Clock())
    uncached.get(job.id)
    uncached.get(job.id)
    assert read.reads == 4 and uncached.fresh(job.id) is None


@pytest.mark.unit
def test_the_oldest_entries_go_beyond_the_capacity(store: JobStore) -> None:
    jobs = [store.add(new_job())[0] for _ in range(4)]
    recent = RecentJobs(store, 60.0, clock=Clock(), capacity=3)
    for job in jobs:
        recent.get(job.id)
    assert recent.fresh(jobs[0].id) is None
    assert all(recent.fresh(job.id) is not None for job in jobs[1:])


@pytest.mark.unit
def test_threads_polling_and_forgetting_at_once(store: JobStore) -> None:
    jobs = [store.add(new_job())[0] for _ in range(20)]
    recent = RecentJobs(store, 60.0, capacity=10)
    errors: list[BaseException] = []

    def poll() -> None:
        try:
            for i in range(300):
                job = jobs[i % len(jobs)]
                got = recent.get(job.id)
                assert got is not None and got.id == job.id
                if i % 7 == 0:
                    recent.forget(job.id)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=poll) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# ---- through the API ------------------------------------------------------------------------


@pytest.mark.api
def test_the_api_shows_its_own_changes_at_once_and_others_within_the_age(
    tmp_path: Path, model_dir: Path
) -> None:
    settings = settings_for(tmp_path, model_dir, job_cache_s=0.5)
    with live_app(settings, auth_required=False) as live:
        api = httpx.Client(base_url=live.root + "/api/v1", timeout=10)
        job, _ = live.services.store.add(new_job())
        assert api.get(f"/jobs/{job.id}").json()["status"] == "queued"
        # This process's own change (the cancel route): the next poll shows it.
        assert api.post(f"/jobs/{job.id}/cancel").status_code == 202
        assert api.get(f"/jobs/{job.id}").json()["status"] == "canceled"
        assert api.delete(f"/jobs/{job.id}").status_code == 204
        assert api.get(f"/jobs/{job.id}").status_code == 404

        # Another process's change (its own store on the same database, no event).
        other = JobStore(Database.from_url(settings.database))
        second, _ = other.add(new_job())
        assert api.get(f"/jobs/{second.id}").json()["status"] == "queued"
        changed_at = time.monotonic()
        other.request_cancel(second.id, now_utc())
        while (status := api.get(f"/jobs/{second.id}").json()["status"]) == "queued":
            assert time.monotonic() - changed_at < 0.5, "older than STEMIFY_JOB_CACHE_S"
            time.sleep(0.02)
        assert status == "canceled"
        other.db.close()


@pytest.mark.api
def test_a_cached_job_stays_hidden_from_other_keys(tmp_path: Path, model_dir: Path) -> None:
    with live_app(settings_for(tmp_path, model_dir, job_cache_s=5.0)) as live:
        alice = add_key(live.services.keys, "alice")
        bob = add_key(live.services.keys, "bob")
        job, _ = live.services.store.add(new_job(owner="alice"))  # add_key: the id is the name
        base = live.root + "/api/v1"
        seen = httpx.get(f"{base}/jobs/{job.id}", headers={"X-API-Key": alice}, timeout=10)
        assert seen.status_code == 200
        hidden = httpx.get(f"{base}/jobs/{job.id}", headers={"X-API-Key": bob}, timeout=10)
        assert hidden.status_code == 404
        assert hidden.json()["error"] == {"code": "not_found", "message": f"job {job.id} not found"}
