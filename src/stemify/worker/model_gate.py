"""Before a worker claims a job: is the job's model here?

- Installed: go on.
- Being fetched by the auto-pull of this process (embedded ``serve`` at first start): the job
  stays queued with stage ``waiting_for_model`` and the worker waits for the download; a failed
  download fails the job with ``model_download_failed`` and the download's own reason.
- Missing on a distributed worker: the job is handed back, unclaimed (so no attempt is counted),
  through the queue's delay so that another worker, one that has the model, takes it. The job
  stays queued until such a worker exists; ``/health`` lists which models each worker has.
- Missing in embedded mode, with nothing fetching it: go on; loading fails with the
  ``model_not_found`` message that says which command installs it.
"""

from __future__ import annotations

import logging
import threading

from stemify.clock import now_utc
from stemify.errors import ModelDownloadError
from stemify.jobs.model import Job, JobStatus, Stage
from stemify.models.autopull import AutoPull, is_installed
from stemify.services import Services

log = logging.getLogger(__name__)

# How long a handed-back job waits in the delay queue before a worker looks at it again.
REFUSED_DELAY_S = 5.0


def model_ready(services: Services, job_id: str, shutdown: threading.Event) -> bool:
    """True when the worker may claim ``job_id`` now; False when it must leave the job alone
    (handed back, failed for its model, or the worker is shutting down)."""
    job = services.store.get(job_id)
    if job is None or job.status.finished:
        return True  # the claim drops the message
    model = job.spec.model
    if is_installed(model, services.settings.model_dir):
        return True
    auto = services.auto_pull
    if auto is not None and auto.name == model:
        return _wait_for(services, job, auto, shutdown)
    if services.settings.distributed:
        log.warning(
            "job %s needs model %s, which this worker does not have: handed back to the queue "
            "for a worker that has it (install it here with `stemify models pull %s`)",
            job_id, model, model,
        )  # fmt: skip
        services.queue.enqueue(job_id, delay_s=REFUSED_DELAY_S)
        return False
    return True


def _mark_waiting(services: Services, job: Job, model: str) -> None:
    """The stage of every queued job of this process waiting for ``model``, not only the one
    this worker holds: the page shows why each of them does not start."""
    for job_id in services.queue.pending() | {job.id}:
        queued = job if job_id == job.id else services.store.get(job_id)
        if queued is None or queued.status != JobStatus.QUEUED or queued.spec.model != model:
            continue
        if services.store.set_waiting(job_id, Stage.WAITING_FOR_MODEL):
            services.jobs.changed(job_id)


def _wait_for(services: Services, job: Job, auto: AutoPull, shutdown: threading.Event) -> bool:
    log.info("job %s waits for model %s (downloading)", job.id, auto.name)
    while True:
        _mark_waiting(services, job, auto.name)
        if auto.wait(1.0):
            break
        if shutdown.is_set():
            return False  # still queued in the store: re-sent at the next start
    error = auto.error
    if error is None:
        return True
    message = f"{error}; fix the cause and restart `stemify serve`, or run `stemify models pull`"
    if services.store.fail(
        job.id, None, code=ModelDownloadError.code, message=message, now=now_utc()
    ):
        failed = services.store.get(job.id)
        if failed is not None:
            services.jobs.finished(failed)
    return False
