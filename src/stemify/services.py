"""Wiring: builds the store, storage, queue, events and model cache from Settings, once per
process, and the few operations that API, workers and the command line share."""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import secrets
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import redis

from stemify.errors import StemifyError
from stemify.jobs.events import EventBus, LocalEventBus, RedisEventBus
from stemify.jobs.model import Job, JobStatus, StemFile
from stemify.jobs.render import job_to_dict
from stemify.jobs.signing import LinkSigner
from stemify.jobs.store import JobStore, now_utc
from stemify.jobs.urlguard import url_policy
from stemify.jobs.webhooks import deliver_guarded
from stemify.models import ModelCache, load_model
from stemify.observability.logging import bound
from stemify.observability.metrics import Metrics
from stemify.settings import Settings
from stemify.storage import Storage, storage_from_url
from stemify.worker.queue import JobQueue, LocalQueue, RedisQueue, make_broker

log = logging.getLogger(__name__)


class ConfigurationError(StemifyError):
    code = "configuration_error"


@dataclass
class Services:
    settings: Settings
    store: JobStore
    storage: Storage
    queue: JobQueue
    events: EventBus
    models: ModelCache
    secret: bytes  # signs webhooks; download links use a key derived from it
    metrics: Metrics = field(default_factory=Metrics)

    def link_signer(self) -> LinkSigner:
        return LinkSigner(self.secret, self.settings.signed_url_ttl_s)

    def close(self) -> None:
        self.queue.close()
        self.store.close()


def check_redis_url(url: str, *, allow_insecure: bool) -> None:
    """Refuse a Redis without a password on another machine: anyone on that network could
    read every job and inject work. Loopback, or a deliberate opt-out, is allowed."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "unix" or parts.password or allow_insecure:
        return
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigurationError(
            f"STEMIFY_REDIS_URL points at {host or 'an unnamed host'} without a password: "
            "use redis://:PASSWORD@host (or rediss:// for TLS), or set "
            "STEMIFY_ALLOW_INSECURE_REDIS=1 if the network is trusted"
        )


def build_services(settings: Settings, metrics: Metrics | None = None) -> Services:
    if settings.redis_url is not None:
        check_redis_url(
            settings.redis_url.get_secret_value(), allow_insecure=settings.allow_insecure_redis
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = JobStore.from_url(settings.database)
    store.migrate()
    queue: JobQueue
    events: EventBus
    if settings.redis_url is not None:
        url = settings.redis_url.get_secret_value()
        queue = RedisQueue(make_broker(url, namespace=f"{settings.redis_prefix}-dramatiq"))
        events = RedisEventBus(redis.Redis.from_url(url), prefix=settings.redis_prefix)
    else:
        queue, events = LocalQueue(), LocalEventBus()
    metrics = metrics or Metrics()
    models = ModelCache(
        loader=functools.partial(load_model, model_dir=settings.model_dir),
        budget_bytes=settings.model_cache_mb << 20,
        observer=metrics,
    )
    return Services(
        settings=settings,
        store=store,
        storage=storage_from_url(settings.storage),
        queue=queue,
        events=events,
        models=models,
        secret=load_secret(settings),
        metrics=metrics,
    )


def load_secret(settings: Settings) -> bytes:
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value().encode()
    if settings.distributed:
        # Every API and worker process must sign with the same key.
        raise ConfigurationError(
            "STEMIFY_SECRET_KEY must be set when STEMIFY_REDIS_URL is set "
            "(all processes share it); generate one with: python -c "
            '"import secrets; print(secrets.token_urlsafe(32))"'
        )
    path = settings.data_dir / "secret_key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(32))
    return path.read_text().strip().encode()


def publish_job(services: Services, job: Job) -> None:
    services.events.publish(job.id, {"id": job.id, "status": job.status.value})


def submit_job(services: Services, job: Job) -> Job:
    """Store a new job; complete it at once from the dedup cache or put it on the queue.

    With an idempotency key its owner already used, the earlier job is returned unchanged."""
    stored, created = services.store.add(job)
    if not created:
        return stored
    services.metrics.job_submitted(job.spec.model, job.source)
    with bound(job_id=job.id):  # the line that ties the request id to the job id
        log.info("job %s submitted (%s, model %s)", job.id, job.source, job.spec.model)
    if job.input_sha256 is not None and complete_from_cache(services, stored):
        done = services.store.get(job.id)
        if done is not None:
            send_webhook(services, done, background=True)
            return done
    services.queue.enqueue(job.id)
    return stored


def complete_from_cache(services: Services, job: Job) -> bool:
    """Finish ``job`` with a copy of the stems of an earlier identical job, if one exists."""
    if job.input_sha256 is None:
        return False
    now = now_utc()
    source = services.store.find_reusable(job.input_sha256, job.spec.params_hash(), now)
    if source is None:
        return False
    stems: dict[str, StemFile] = {}
    try:
        for name, stem in source.stems.items():
            key = f"jobs/{job.id}/stems/{Path(stem.key).name}"
            stems[name] = StemFile(name, key, services.storage.copy(stem.key, key))
    except StemifyError:
        # The earlier job expired under us: separate for real.
        services.storage.delete_prefix(f"jobs/{job.id}/stems/")
        return False
    ttl = timedelta(hours=services.settings.result_ttl_hours)
    finished = services.store.succeed(
        job.id,
        job.worker_id,
        stems=stems,
        quality=source.quality,
        stage_seconds={},
        now=now,
        expires_at=now + ttl,
        cache_hit=True,
    )
    if not finished:
        services.storage.delete_prefix(f"jobs/{job.id}/stems/")
        return False
    done = services.store.get(job.id)
    if done is not None:
        publish_job(services, done)
    services.metrics.job_finished(job.spec.model, "succeeded", None, cache_hit=True)
    return True


def send_webhook(services: Services, job: Job, *, background: bool = False) -> None:
    if job.webhook_url is None or job.status not in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        return
    base = (services.settings.public_url or "").rstrip("/") + "/api/v1"
    # Signed links: the receiver downloads the stems without an API key.
    links = services.link_signer()
    payload = job_to_dict(job, base_url=base, links=links)
    url = job.webhook_url

    def send() -> None:
        result = deliver_guarded(
            url,
            payload,
            services.secret,
            url_policy(services.settings),
            attempts=services.settings.webhook_attempts,
        )
        services.metrics.webhook(result.delivered)
        if not result.delivered:
            with bound(job_id=job.id):  # may run in its own thread, outside the job's context
                log.warning(
                    "webhook for job %s not delivered after %d attempts: %s",
                    job.id,
                    result.attempts,
                    result.error,
                )

    if background:
        threading.Thread(target=send, name=f"webhook-{job.id}", daemon=True).start()
    else:
        send()
