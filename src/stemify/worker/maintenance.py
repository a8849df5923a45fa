"""Periodic repairs: the reconciler (nothing is lost) and the sweeper (nothing is kept too long)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from stemify.errors import StorageError
from stemify.jobs.layout import job_prefix, stems_prefix
from stemify.jobs.model import JobStatus
from stemify.services import Services
from stemify.worker.scratch import remove_orphan_scratch

log = logging.getLogger(__name__)


def reconcile(services: Services, now: datetime, *, at_start: bool = False) -> list[str]:
    """Re-enqueue queued jobs the queue does not hold, and running jobs whose worker died.

    At start every queued job not in the queue is re-sent; later only those that have waited
    ``requeue_after_s`` since they were last sent, so a message in flight is not doubled.
    Doubles would be harmless anyway: a claim succeeds once."""
    settings, store, queue = services.settings, services.store, services.queue
    fail_poison_jobs(services, now)
    pending = queue.pending()
    cutoff = None if at_start else now - timedelta(seconds=settings.requeue_after_s)
    resend = [
        job_id for job_id in store.queued_ids(enqueued_before=cutoff) if job_id not in pending
    ]
    stale = store.stale_running_ids(
        now - timedelta(seconds=settings.heartbeat_timeout_s),
        enqueued_before=now - timedelta(seconds=settings.requeue_after_s),
    )
    for job_id in [*resend, *stale]:
        queue.enqueue(job_id)
        store.mark_enqueued(job_id, now)
    if resend or stale:
        log.warning("reconciler re-enqueued %d queued and %d stale jobs", len(resend), len(stale))
    return [*resend, *stale]


def fail_poison_jobs(services: Services, now: datetime) -> list[str]:
    """Fail the running jobs whose silent worker is the ``max_attempts``-th they lost: an input
    that kills every worker taking it must not be handed to the next one."""
    store, settings = services.store, services.settings
    stale_before = now - timedelta(seconds=settings.heartbeat_timeout_s)
    failed = []
    for job_id in store.stale_running_ids(stale_before):
        job = store.get(job_id)
        if job is None or not store.fail_lost(job, stale_before, settings.max_attempts, now):
            continue
        failed.append(job_id)
        log.error("job %s failed: its worker stopped %d times", job_id, job.worker_losses + 1)
        services.storage.delete_prefix(stems_prefix(job_id))
        final = store.get(job_id)
        if final is not None:
            services.jobs.finished(final)
    return failed


def sweep(services: Services, now: datetime) -> list[str]:
    """Delete the objects of jobs past their expiry (failed and canceled ones too, a result
    TTL after they ended) and mark them expired. A job whose objects cannot be deleted now
    (storage down) stays as it is, for the next sweep."""
    swept = []
    ended_before = now - timedelta(hours=services.settings.result_ttl_hours)
    for job in services.store.expired_jobs(now, ended_before=ended_before):
        if not _delete_objects(services, job.id) and services.store.mark_expired(job.id):
            swept.append(job.id)
    if swept:
        log.info("sweeper expired %d jobs", len(swept))
    return swept


def clean_temp(services: Services) -> int:
    """Remove temp files of storage writes that a crashed process abandoned."""
    removed = services.storage.cleanup_temp(services.settings.temp_max_age_s)
    if removed:
        log.info("removed %d abandoned temp file(s) from storage", removed)
    scratch = remove_orphan_scratch()
    if scratch:
        log.info("removed %d scratch dir(s) of workers that stopped", scratch)
    return removed + scratch


def cleanup(
    services: Services, statuses: list[JobStatus], older_than: timedelta, now: datetime
) -> int:
    """Delete finished jobs (rows and files) of the given statuses, finished before a cutoff."""
    removed = 0
    for job_id in services.store.finished_ids(statuses, now - older_than):
        if not _delete_objects(services, job_id):
            removed += services.store.delete(job_id)
    return removed


def _delete_objects(services: Services, job_id: str) -> str | None:
    """Delete every object of the job; the storage's error, if that failed, else None."""
    try:
        services.storage.delete_prefix(job_prefix(job_id))
    except StorageError as exc:
        log.warning("cannot delete the objects of job %s (tried again later): %s", job_id, exc)
        return exc.message
    return None
