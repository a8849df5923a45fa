"""What the API, the workers and the command line do to a job's life alike: submit it (with
dedup and the audio-minutes charge), complete it from an identical finished job, say that it
changed, and close it out once it has ended (metrics, webhook, event).

A job's end is recorded here and nowhere else: :meth:`JobLifecycle.finished` is called once
per job that ends, by whoever ended it (a worker, a cancel, a dedup hit)."""

from __future__ import annotations

import logging
import threading
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta
from pathlib import PurePosixPath

from stemify.clock import now_utc
from stemify.egress.urlguard import URLPolicy
from stemify.egress.webhooks import deliver_guarded
from stemify.errors import QueueUnavailableError, StemifyError, StorageError
from stemify.jobs.events import EventBus
from stemify.jobs.layout import stem_key, stems_prefix
from stemify.jobs.links import DownloadLinks
from stemify.jobs.model import Job, JobStatus, StemFile
from stemify.jobs.recent import RecentJobs
from stemify.jobs.render import job_to_dict
from stemify.jobs.store import JobStore
from stemify.keys.usage import UsageLedger
from stemify.observability.logging import bound
from stemify.observability.metrics import Metrics
from stemify.queue.transport import JobQueue
from stemify.storage import Storage

log = logging.getLogger(__name__)

_NOTIFIED = (JobStatus.SUCCEEDED, JobStatus.FAILED)


@dataclass(frozen=True)
class Webhooks:
    """Signed webhook deliveries through the guarded proxy, with signed stem links so the
    receiver downloads without an API key."""

    secret: bytes
    policy: URLPolicy
    links: DownloadLinks
    base_url: str  # absolute API root for the links, e.g. https://stems.example.com/api/v1
    attempts: int
    metrics: Metrics

    def send(self, job: Job) -> None:
        if job.webhook_url is None:
            return
        payload = job_to_dict(job, base_url=self.base_url, links=self.links)
        result = deliver_guarded(
            job.webhook_url, payload, self.secret, self.policy, attempts=self.attempts
        )
        self.metrics.webhook(result.delivered)
        if not result.delivered:
            with bound(job_id=job.id):  # may run in its own thread, outside the job's context
                log.warning(
                    "webhook for job %s not delivered after %d attempts: %s",
                    job.id, result.attempts, result.error,
                )  # fmt: skip


@dataclass(frozen=True)
class JobLifecycle:
    store: JobStore
    usage: UsageLedger
    storage: Storage
    queue: JobQueue
    events: EventBus
    metrics: Metrics
    webhooks: Webhooks
    result_ttl: timedelta
    # The API's status-poll cache, told of every change this process makes.
    recent: RecentJobs | None = None

    def submit(self, job: Job) -> Job:
        """Store a new job; complete it at once from the dedup cache or put it on the queue.

        With an idempotency key its owner already used, the earlier job is returned unchanged
        (and nothing is charged)."""
        stored, created = self.store.add(job)
        if not created:
            return stored
        if job.input_duration_s is not None:
            self.usage.charge(job.owner, job.created_at.date(), job.input_duration_s)
        self.metrics.job_submitted(job.spec.model, job.source)
        with bound(job_id=job.id):  # the line that ties the request id to the job id
            log.info("job %s submitted (%s, model %s)", job.id, job.source, job.spec.model)
        done = self.complete_from_cache(stored)
        if done is not None:
            self.finished(done, background=True)
            return done
        try:
            self.queue.enqueue(job.id)
        except QueueUnavailableError as exc:
            # Stored is accepted: the reconciler sends it once the queue is back.
            log.warning("job %s stays queued unsent: %s", job.id, exc.message)
        return stored

    def complete_from_cache(self, job: Job) -> Job | None:
        """Finish ``job`` with a copy of the stems of an earlier identical job, if one exists;
        the finished job, for the caller to pass to :meth:`finished`."""
        if job.input_sha256 is None:
            return None
        now = now_utc()
        source = self.store.find_reusable(job.input_sha256, job.spec.params_hash(), now)
        if source is None:
            return None
        stems: dict[str, StemFile] = {}
        try:
            for name, stem in source.stems.items():
                key = stem_key(job.id, PurePosixPath(stem.key).name)
                # Server-side (S3 CopyObject, a hard link on disk): no byte comes through here.
                stems[name] = StemFile(name, key, self.storage.copy(stem.key, key))
        except StemifyError as exc:
            # The earlier job expired under us, or the storage failed: separate for real (a
            # worker that cannot reach the storage either fails the job with storage_error).
            log.info("job %s: no dedup copy (%s); separating", job.id, exc.message)
            with suppress(StorageError):  # what is left is the sweeper's
                self.storage.delete_prefix(stems_prefix(job.id))
            return None
        finished = self.store.succeed(
            job.id,
            job.worker_id,
            stems=stems,
            quality=source.quality,
            stage_seconds={},
            now=now,
            expires_at=now + self.result_ttl,
            cache_hit=True,
        )
        if not finished:
            self.storage.delete_prefix(stems_prefix(job.id))
            return None
        return self.store.get(job.id)

    def changed(self, job_id: str) -> None:
        if self.recent is not None:
            self.recent.forget(job_id)  # before the event: a woken reader must not get it
        self.events.changed(job_id)

    def finished(self, job: Job, *, background: bool = False) -> None:
        """Record that ``job`` ended: its metrics, its event, its webhook (on success or
        failure; in a thread of its own with ``background``, so a request does not wait)."""
        model, status = job.spec.model, job.status
        self.metrics.job_finished(model, status.value, job.error_code, cache_hit=job.cache_hit)
        if status == JobStatus.SUCCEEDED and not job.cache_hit:
            self.metrics.job_processed(model, job.stage_seconds, job.input_duration_s)
        self.changed(job.id)
        if job.webhook_url is None or status not in _NOTIFIED:
            return
        if background:
            threading.Thread(
                target=self.webhooks.send, args=(job,), name=f"webhook-{job.id}", daemon=True
            ).start()
        else:
            self.webhooks.send(job)
