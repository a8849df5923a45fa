"""Poison jobs: a job whose worker stops (killed, out of memory) STEMIFY_MAX_ATTEMPTS times ends
``failed/worker_lost`` instead of taking down one worker after another; ``jobs retry`` resets
the count. The store on SQLite and PostgreSQL; the reconciler and scratch cleanup in process."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stemify.jobs.layout import stem_key
from stemify.jobs.model import Job, JobSpec, JobStatus
from stemify.jobs.store import JobStore
from stemify.queue.transport import LocalQueue
from stemify.services import Services
from stemify.worker.maintenance import reconcile
from stemify.worker.scratch import remove_orphan_scratch, scratch_prefix

pytestmark = pytest.mark.unit

MakeServices = Callable[..., Services]
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
TIMEOUT = timedelta(seconds=30)
MESSAGE = (
    "the worker processing this job stopped 3 times; the input may need more memory than a "
    "worker has"
)


def new_job() -> Job:
    return Job(id=uuid.uuid4().hex, spec=JobSpec(model="tiny"), source="upload", created_at=T0)


def lose_workers(store: JobStore, job: Job, times: int, max_losses: int = 3) -> datetime:
    """Claim ``job`` and let its worker go silent, ``times`` times; the time after the last."""
    now = T0
    for attempt in range(times):
        claimed = store.claim(job.id, f"w{attempt}", now, now - TIMEOUT, max_losses)
        assert claimed is not None, f"claim {attempt + 1} refused"
        assert claimed.worker_losses == attempt
        now += timedelta(minutes=5)  # no heartbeat since: the worker died
    return now


def lost_job(store: JobStore, times: int) -> tuple[Job, datetime]:
    """A stored job whose last ``times`` workers died, as read after that, and the time."""
    job = new_job()
    store.add(job)
    now = lose_workers(store, job, times)
    read = store.get(job.id)
    assert read is not None and read.status is JobStatus.RUNNING
    return read, now


def test_a_job_whose_workers_die_fails_at_the_limit(store: JobStore) -> None:
    job = new_job()
    store.add(job)
    now = lose_workers(store, job, 3)
    # The third worker died too: no fourth is given the job.
    assert store.claim(job.id, "w3", now, now - TIMEOUT, 3) is None
    running = store.get(job.id)
    assert running is not None and running.worker_losses == 2 and running.worker_id == "w2"
    assert store.fail_lost(running, now - TIMEOUT, 3, now)
    failed = store.get(job.id)
    assert failed is not None and failed.status is JobStatus.FAILED
    assert (failed.error_code, failed.error_message) == ("worker_lost", MESSAGE)
    assert failed.worker_losses == 3 and failed.attempts == 3 and failed.finished_at == now
    assert not store.fail_lost(running, now - TIMEOUT, 3, now)  # once


def test_below_the_limit_nothing_is_failed(store: JobStore) -> None:
    running, now = lost_job(store, 2)
    assert not store.fail_lost(running, now - TIMEOUT, 3, now)
    assert store.claim(running.id, "w2", now, now - TIMEOUT, 3) is not None


def test_a_live_worker_or_a_newer_claim_is_not_failed(store: JobStore) -> None:
    read, now = lost_job(store, 3)
    assert not store.fail_lost(read, now - timedelta(minutes=10), 3, now)  # it beat recently
    # Read, then taken over under a higher limit before the failure was written: not failed.
    assert store.claim(read.id, "w3", now, now - TIMEOUT, 5) is not None
    assert not store.fail_lost(read, now - TIMEOUT, 3, now)
    after = store.get(read.id)
    assert after is not None and after.status is JobStatus.RUNNING and after.worker_id == "w3"


def test_a_graceful_hand_back_is_not_a_lost_worker(store: JobStore) -> None:
    job = new_job()
    store.add(job)
    for attempt in range(5):
        assert store.claim(job.id, f"w{attempt}", T0, T0 - TIMEOUT, 3) is not None
        assert store.release(job.id, f"w{attempt}", T0)
    again = store.get(job.id)
    assert again is not None and again.attempts == 5 and again.worker_losses == 0


def test_retry_resets_the_count_on_purpose(store: JobStore) -> None:
    read, now = lost_job(store, 3)
    assert store.fail_lost(read, now - TIMEOUT, 3, now)
    assert store.retry(read.id, now)
    retried = store.get(read.id)
    assert retried is not None and retried.status is JobStatus.QUEUED
    assert retried.worker_losses == 0 and retried.error_code is None
    assert lose_workers(store, read, 3) is not None  # three more workers may take it


def test_the_reconciler_fails_the_poison_job_and_resends_the_others(
    make_services: MakeServices,
) -> None:
    services = make_services(max_attempts=2, heartbeat_timeout_s=30, requeue_after_s=30)
    store, queue = services.store, services.queue
    assert isinstance(queue, LocalQueue)
    poison, other = new_job(), new_job()
    for job in (poison, other):
        store.add(job)
    start = datetime.now(UTC)
    assert store.claim(poison.id, "w0", start, start - TIMEOUT, 2)
    later = start + timedelta(minutes=5)
    assert store.claim(poison.id, "w1", later, later - TIMEOUT, 2)  # the first worker died
    assert store.claim(other.id, "w1", later, later - TIMEOUT, 2)
    # A stem the dead worker stored before it died is removed with the failure.
    partial = stem_key(poison.id, "drums.wav")
    with services.storage.writer(partial) as out:
        out.write(b"partial")
    end = later + timedelta(minutes=5)  # and now the second died, with both jobs
    assert reconcile(services, end) == [other.id]
    failed = store.get(poison.id)
    assert failed is not None and failed.status is JobStatus.FAILED
    assert failed.error_code == "worker_lost" and "stopped 2 times" in (failed.error_message or "")
    assert not services.storage.exists(partial)
    assert queue.pending() == {other.id}
    samples = next(iter(services.metrics.jobs_finished.collect())).samples
    counted = {
        (s.labels["status"], s.labels["error_code"]): s.value
        for s in samples
        if s.name.endswith("_total")
    }
    assert counted.get(("failed", "worker_lost")) == 1.0


def test_max_attempts_is_at_least_one(make_services: MakeServices) -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        make_services(max_attempts=0)


def test_scratch_of_a_dead_worker_is_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    orphan = tmp_path / f"stemify-job-{dead.stdout.strip()}-job1-abc"
    (orphan / "stems").mkdir(parents=True)
    (orphan / "stems" / "drums.wav").write_bytes(b"x")
    live = tmp_path / f"{scratch_prefix('job2')}xyz"
    live.mkdir()
    unrelated = tmp_path / "stemify-job-notapid-x"
    unrelated.mkdir()
    assert remove_orphan_scratch(tmp_path) == 1
    assert not orphan.exists() and live.exists() and unrelated.exists()
    assert str(os.getpid()) in live.name
