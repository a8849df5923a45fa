"""Run one job end to end: claim, fetch, separate, store, finish — whatever happens.

A runner never trusts the queue: it claims the job in the store first (a message for a job
that is finished or owned by a live worker is dropped), beats while it works, and writes its
result only while it still owns the job.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import ClassVar, Literal, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from stemify.audio import probe
from stemify.audio.limits import media_limits
from stemify.clock import now_utc
from stemify.db.retry import call_retrying
from stemify.egress.fetch import FetchLimits, fetch_url
from stemify.engine import CancelToken, Progress, separate_file
from stemify.errors import (
    AudioLimitError,
    CanceledError,
    DownloadError,
    InvalidAudioError,
    InvalidOptionError,
    StemifyError,
    StorageError,
    StorageFullError,
)
from stemify.formatting import check_duration, format_duration
from stemify.jobs.layout import input_key, job_prefix, stem_key, stems_prefix
from stemify.jobs.model import Job, JobStatus, Stage, StemFile
from stemify.observability.logging import bind, bound
from stemify.observability.sentry import job_scope
from stemify.services import Services
from stemify.storage import local_file
from stemify.worker.model_gate import model_ready
from stemify.worker.scratch import scratch_prefix

log = logging.getLogger(__name__)

StopReason = Literal["canceled", "timeout", "shutdown", "lost"]
STORAGE_FAILED = "storage unavailable while the job ran; it can be retried"
CALLER_ERRORS = (InvalidAudioError, AudioLimitError, InvalidOptionError, DownloadError)
T = TypeVar("T")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class _Watch:
    """Why the job must stop, decided by the heartbeat thread."""

    token: CancelToken = field(default_factory=CancelToken)
    reason: StopReason | None = None

    def stop(self, reason: StopReason) -> None:
        if self.reason is None:
            self.reason = reason
        self.token.cancel()


class JobRunner:
    def __init__(self, services: Services, worker_id: str, shutdown: threading.Event) -> None:
        self.services = services
        self.worker_id = worker_id
        self.shutdown = shutdown

    def _retry(self, what: str, call: Callable[[], T]) -> T:
        """A store call retried through a database restart, for as long as the job stays this
        worker's without a heartbeat; after that another worker may own it (and the ownership
        checks of the store refuse this one's writes anyway)."""
        return call_retrying(call, self.services.settings.heartbeat_timeout_s, what)

    def run(self, job_id: str) -> None:
        """Run the job; every log line and error report on the way carries its id."""
        with bound(job_id=job_id), job_scope(job_id):
            self._run(job_id)

    def _run(self, job_id: str) -> None:
        store, settings = self.services.store, self.services.settings
        if not model_ready(self.services, job_id, self.shutdown):
            return
        now = now_utc()
        stale_before = now - timedelta(seconds=settings.heartbeat_timeout_s)
        job = self._retry(
            "claim",
            lambda: store.claim(job_id, self.worker_id, now, stale_before, settings.max_attempts),
        )
        if job is None:
            log.info(
                "job %s is not claimable (finished, canceled, owned, or its workers' losses at "
                "STEMIFY_MAX_ATTEMPTS): message dropped",
                job_id,
            )
            return
        log.info("job %s claimed by %s (attempt %d)", job_id, self.worker_id, job.attempts)
        self.services.jobs.changed(job_id)
        watch = _Watch()
        beating = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat,
            args=(job, watch, beating),
            name=f"heartbeat-{job_id}",
            daemon=True,
        )
        beat.start()
        try:
            with tempfile.TemporaryDirectory(prefix=scratch_prefix(job_id)) as scratch:
                self._execute(job, Path(scratch), watch)
        except CanceledError:
            self._stopped(job, watch.reason or "canceled")
        except StemifyError as exc:
            # The caller's input is the caller's problem; anything else (a broken model, full
            # storage, a missing tool) is the operator's, logged as an error (and so reported).
            level = logging.INFO if isinstance(exc, CALLER_ERRORS) else logging.ERROR
            log.log(level, "job %s failed: %s: %s", job_id, exc.code, exc.message)
            # A storage error names the bucket, endpoint or paths: for the log, not the caller
            # (a full disk's message names only the stem that did not fit: it is kept).
            hidden = isinstance(exc, StorageError) and not isinstance(exc, StorageFullError)
            message = STORAGE_FAILED if hidden else exc.message
            code, now = exc.code, now_utc()
            self._retry(
                "fail",
                lambda: store.fail(job_id, self.worker_id, code=code, message=message, now=now),
            )
        except Exception:
            log.exception("job %s: unexpected error", job_id)
            self._retry(
                "fail",
                lambda: store.fail(
                    job_id,
                    self.worker_id,
                    code="internal_error",
                    message="an internal error occurred; the job can be retried",
                    now=now_utc(),
                ),
            )
        finally:
            beating.set()
            beat.join()
        self._close(job_id)

    def _close(self, job_id: str) -> None:
        """Clean up after the run, and close out the job if this runner ended it (a job handed
        back or taken over is closed out by whoever ends it)."""
        final = self._retry("read", lambda: self.services.store.get(job_id))
        if final is None:  # deleted while running: leave no orphan files behind
            self._remove(job_prefix(job_id))
            return
        if final.status.finished and final.status != JobStatus.SUCCEEDED:
            self._remove(stems_prefix(job_id))
        if final.status.finished and final.worker_id == self.worker_id:
            self.services.jobs.finished(final)
        else:
            self.services.jobs.changed(job_id)

    def _remove(self, prefix: str) -> None:
        """Delete what a job that did not succeed wrote. With the storage down (the likely
        reason it failed), the sweeper deletes it once the job is past the result TTL."""
        try:
            self.services.storage.delete_prefix(prefix)
        except StorageError as exc:
            log.warning("cannot delete %s now, left for the sweeper: %s", prefix, exc.message)

    def _stopped(self, job: Job, reason: StopReason) -> None:
        store, now = self.services.store, now_utc()
        if reason == "shutdown":
            if self._retry("release", lambda: store.release(job.id, self.worker_id, now)):
                self.services.queue.enqueue(job.id)
                log.info("job %s handed back to the queue (shutdown)", job.id)
        elif reason == "timeout":
            limit = format_duration(self.services.settings.job_timeout_s)
            self._retry("fail", lambda: store.fail(
                job.id, self.worker_id, code="timeout",
                message=f"the job took longer than the {limit} limit", now=now,
            ))  # fmt: skip
        elif reason == "canceled":
            self._retry("cancel", lambda: store.mark_canceled(job.id, self.worker_id, now))
        # "lost": another worker owns the job now; write nothing.

    def _heartbeat(self, job: Job, watch: _Watch, done: threading.Event) -> None:
        bind(job_id=job.id)  # a new thread starts with no context
        store, settings = self.services.store, self.services.settings
        started = time.monotonic()
        shutdown_seen: float | None = None
        while not done.wait(settings.heartbeat_interval_s):
            try:
                if not store.heartbeat(job.id, self.worker_id, now_utc()):
                    watch.stop("canceled" if store.cancel_requested(job.id) else "lost")
                elif store.cancel_requested(job.id):
                    watch.stop("canceled")
            except SQLAlchemyError:
                # The store is briefly unreachable: keep working; if it stays away, the job is
                # re-run elsewhere and this worker's result is refused as no longer its own.
                log.warning("job %s: heartbeat failed", job.id, exc_info=True)
            if time.monotonic() - started > settings.job_timeout_s:
                watch.stop("timeout")
            if self.shutdown.is_set():
                shutdown_seen = shutdown_seen or time.monotonic()
                if time.monotonic() - shutdown_seen > settings.shutdown_grace_s:
                    watch.stop("shutdown")

    # ---- the work ----------------------------------------------------------------------

    def _execute(self, job: Job, scratch: Path, watch: _Watch) -> None:
        services, store = self.services, self.services.store
        seconds: dict[str, float] = {}
        if job.input_key is None:
            started = time.monotonic()
            job = self._download(job, scratch, watch)
            seconds["downloading"] = time.monotonic() - started
            if services.jobs.complete_from_cache(job) is not None:
                return
        assert job.input_key is not None
        source = local_file(services.storage, job.input_key, scratch)
        loaded = services.models.get(job.spec.model)
        settings = services.settings
        options = job.spec.separation_options(
            device=settings.device, batch_size=settings.batch_size
        )
        ext = options.output.extension
        result = separate_file(
            source,
            loaded.model,
            lambda stem: scratch / "stems" / f"{stem}.{ext}",
            options,
            on_progress=_Reporter(services, job, self.worker_id),
            cancel=watch.token,
            limits=media_limits(settings),
            backend=loaded.backend,
        )
        seconds.update(result.stage_seconds)

        self._retry(
            "progress",
            lambda: store.set_progress(job.id, self.worker_id, Stage.STORING, 99.0, None),
        )
        started = time.monotonic()
        stems = {
            name: StemFile(
                name,
                stem_key(job.id, path.name),
                services.storage.put_file(stem_key(job.id, path.name), path, move=True),
            )
            for name, path in result.stems.items()
        }
        seconds["storing"] = time.monotonic() - started
        now = now_utc()
        succeeded = self._retry(
            "succeed",
            lambda: store.succeed(
                job.id,
                self.worker_id,
                stems=stems,
                quality=result.quality.to_dict(),
                stage_seconds=seconds,
                now=now,
                expires_at=now + timedelta(hours=settings.result_ttl_hours),
            ),
        )
        if not succeeded:
            raise CanceledError("the job was canceled or taken over while storing")

    def _download(self, job: Job, scratch: Path, watch: _Watch) -> Job:
        services, settings = self.services, self.services.settings
        assert job.source_url is not None
        services.store.set_progress(job.id, self.worker_id, Stage.DOWNLOADING, 0.0, None)
        limits = FetchLimits(
            max_bytes=settings.max_upload_mb << 20,
            max_duration_s=settings.max_duration_s,
            timeout_s=settings.download_timeout_s,
            retries=settings.download_retries,
        )
        fetched = fetch_url(
            job.source_url,
            scratch / "download",
            limits,
            policy=services.url_policy,
        )
        if watch.token.canceled:
            raise CanceledError()
        info = probe(fetched.path, limits=media_limits(settings))
        check_duration(info.duration_s, settings.max_duration_s, "the linked audio")
        key = input_key(job.id)
        digest = sha256_of(fetched.path)
        size = services.storage.put_file(key, fetched.path, move=True)
        first = self._retry("input", lambda: services.store.set_input(
            job.id, key=key, sha256=digest, size=size, duration_s=info.duration_s,
            fmt=info.codec, name=fetched.title,
        ))  # fmt: skip
        if first:  # the owner's daily minutes, once per job however often it is fetched
            services.usage.charge(job.owner, now_utc().date(), info.duration_s)
        updated = self._retry("read", lambda: services.store.get(job.id))
        assert updated is not None
        return updated


class _Reporter:
    """Engine progress → the store (at most twice a second) and the event bus."""

    _STAGES: ClassVar[dict[str, Stage]] = {
        "decoding": Stage.DECODING,
        "separating": Stage.SEPARATING,
        "encoding": Stage.ENCODING,
    }

    def __init__(self, services: Services, job: Job, worker_id: str) -> None:
        self._services = services
        self._job = job
        self._worker_id = worker_id
        self._last = 0.0
        self._stage: Stage | None = None

    def __call__(self, progress: Progress) -> None:
        stage = self._STAGES[progress.stage]
        now = time.monotonic()
        if stage == self._stage and now - self._last < 0.5 and progress.fraction < 1.0:
            return
        self._stage, self._last = stage, now
        percent = min(progress.fraction * 98.0, 98.0)  # the rest is storing
        try:
            self._services.store.set_progress(
                self._job.id, self._worker_id, stage, percent, progress.eta_s
            )
        except SQLAlchemyError:  # progress is best effort; the result is what must not be lost
            log.warning("job %s: progress update failed", self._job.id, exc_info=True)
        self._services.jobs.changed(self._job.id)
