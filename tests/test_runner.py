"""The runner's stop reasons and the reconciler, in process: a real store, storage, model and
engine, a JobRunner called directly, and the heartbeat thread deciding why a job stops."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from stemify.clock import now_utc
from stemify.jobs.layout import input_key
from stemify.jobs.model import Job, JobSpec, JobStatus
from stemify.queue.transport import LocalQueue
from stemify.services import Services
from stemify.worker.maintenance import reconcile
from stemify.worker.runner import JobRunner

pytestmark = pytest.mark.unit

MakeAudio = Callable[..., Path]
MakeServices = Callable[..., Services]
FAST_BEAT = {"heartbeat_interval_s": 0.05, "heartbeat_timeout_s": 30}


def queued_job(services: Services, song: Path) -> Job:
    job_id = f"job-{time.monotonic_ns()}"
    size = services.storage.put_file(input_key(job_id), song)
    job = Job(
        id=job_id, spec=JobSpec(model="tiny", shifts=0), source="upload", created_at=now_utc(),
        input_key=input_key(job_id), input_size=size, input_duration_s=30.0, input_format="wav",
    )  # fmt: skip
    services.store.add(job)
    return job


def finished_counts(services: Services) -> dict[tuple[str, ...], float]:
    samples = next(iter(services.metrics.jobs_finished.collect())).samples
    return {
        (s.labels["status"], s.labels["error_code"]): s.value
        for s in samples
        if s.name.endswith("_total")
    }


def run_in_thread(runner: JobRunner, job_id: str) -> threading.Thread:
    thread = threading.Thread(target=runner.run, args=(job_id,), daemon=True)
    thread.start()
    return thread


def wait_running(services: Services, job_id: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        job = services.store.get(job_id)
        if job is not None and job.status == JobStatus.RUNNING:
            return
        time.sleep(0.01)
    raise AssertionError("the job never ran")


@pytest.fixture
def song(make_audio: MakeAudio) -> Path:
    # Long enough that the heartbeat thread acts while the engine still works.
    return make_audio("song.wav", seconds=30.0)


def test_a_job_runs_to_success_and_is_counted_once(make_services: MakeServices, song: Path) -> None:
    services = make_services(**FAST_BEAT)
    job = queued_job(services, song)
    JobRunner(services, "w1", threading.Event()).run(job.id)
    done = services.store.get(job.id)
    assert done is not None and done.status == JobStatus.SUCCEEDED and len(done.stems) == 4
    assert finished_counts(services) == {("succeeded", ""): 1.0}


def test_cancel_while_running_ends_canceled_without_stems(
    make_services: MakeServices, song: Path
) -> None:
    services = make_services(**FAST_BEAT)
    job = queued_job(services, song)
    thread = run_in_thread(JobRunner(services, "w1", threading.Event()), job.id)
    wait_running(services, job.id)
    services.store.request_cancel(job.id, now_utc())
    thread.join(30)
    done = services.store.get(job.id)
    assert done is not None and done.status == JobStatus.CANCELED
    assert done.stems == {} and not services.storage.exists(f"jobs/{job.id}/stems/vocals.wav")
    assert finished_counts(services) == {("canceled", "canceled"): 1.0}


def test_timeout_fails_the_job_with_its_code(make_services: MakeServices, song: Path) -> None:
    services = make_services(**FAST_BEAT, job_timeout_s=0.01)
    job = queued_job(services, song)
    JobRunner(services, "w1", threading.Event()).run(job.id)
    done = services.store.get(job.id)
    assert done is not None and done.status == JobStatus.FAILED
    assert done.error_code == "timeout" and "limit" in (done.error_message or "")
    assert finished_counts(services) == {("failed", "timeout"): 1.0}


def test_shutdown_hands_the_job_back_to_the_queue(make_services: MakeServices, song: Path) -> None:
    services = make_services(**FAST_BEAT, shutdown_grace_s=0)
    job = queued_job(services, song)
    shutdown = threading.Event()
    shutdown.set()  # the worker is stopping: the grace period (0 s) runs out at once
    JobRunner(services, "w1", shutdown).run(job.id)
    back = services.store.get(job.id)
    assert back is not None and back.status == JobStatus.QUEUED and back.worker_id is None
    assert isinstance(services.queue, LocalQueue) and job.id in services.queue.pending()
    assert finished_counts(services) == {}  # not ended: counted by whoever finishes it


def test_lost_ownership_writes_nothing(make_services: MakeServices, song: Path) -> None:
    services = make_services(**FAST_BEAT)
    job = queued_job(services, song)
    thread = run_in_thread(JobRunner(services, "w1", threading.Event()), job.id)
    wait_running(services, job.id)
    # Another worker takes the job over (as after a missed heartbeat).
    later = now_utc() + timedelta(hours=1)
    assert services.store.claim(job.id, "w2", now_utc(), later) is not None
    thread.join(30)
    after = services.store.get(job.id)
    assert after is not None and after.status == JobStatus.RUNNING and after.worker_id == "w2"
    assert after.stems == {} and finished_counts(services) == {}


# ---- the reconciler -----------------------------------------------------------------------------


def test_reconciler_resends_what_the_queue_lost_and_only_that(
    make_services: MakeServices, song: Path
) -> None:
    services = make_services(requeue_after_s=30, heartbeat_timeout_s=30)
    queue = services.queue
    assert isinstance(queue, LocalQueue)
    lost = queued_job(services, song)  # stored but never sent: the queue lost it
    sent = queued_job(services, song)
    queue.enqueue(sent.id)
    now = now_utc()
    # Just stored: a message may still be in flight, so it waits for requeue_after_s.
    assert reconcile(services, now) == []
    # At start every queued job the queue does not hold is sent again.
    assert reconcile(services, now, at_start=True) == [lost.id]
    assert queue.pending() == {lost.id, sent.id}
    assert reconcile(services, now + timedelta(seconds=60)) == []  # both are in the queue


def test_reconciler_resends_a_job_whose_worker_stopped_beating(
    make_services: MakeServices, song: Path
) -> None:
    services = make_services(requeue_after_s=30, heartbeat_timeout_s=30)
    job = queued_job(services, song)
    start = now_utc()
    assert services.store.claim(job.id, "dead-worker", start, start) is not None
    assert (
        reconcile(services, start + timedelta(seconds=10)) == []
    )  # still beating, as far as known
    later = start + timedelta(seconds=120)
    assert reconcile(services, later) == [job.id]
    assert isinstance(services.queue, LocalQueue) and job.id in services.queue.pending()
    # The next worker's claim takes it over from the dead one.
    stale_before = later - timedelta(seconds=30)
    claimed = services.store.claim(job.id, "w2", later, stale_before)
    assert claimed is not None and claimed.attempts == 2
