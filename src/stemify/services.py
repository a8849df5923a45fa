"""Wiring: builds the stores, storage, queue, events, model cache and job lifecycle from
Settings, once per process. Behaviour lives in the packages; nothing here but construction."""

from __future__ import annotations

import functools
import ipaddress
import os
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import redis

from stemify.db.database import Database
from stemify.egress.urlguard import URLPolicy
from stemify.errors import ConfigurationError
from stemify.jobs.events import EventBus, LocalEventBus, RedisEventBus
from stemify.jobs.lifecycle import JobLifecycle, Webhooks
from stemify.jobs.links import DownloadLinks, build_links
from stemify.jobs.recent import RecentJobs
from stemify.jobs.store import JobStore
from stemify.keys.store import KeyStore
from stemify.keys.usage import UsageLedger
from stemify.models import ModelCache
from stemify.models.autopull import AutoPull
from stemify.models.extra import full_catalogue
from stemify.observability.metrics import Metrics
from stemify.queue.registry import WorkerRegistry
from stemify.queue.transport import (
    JobQueue,
    LocalQueue,
    RedisQueue,
    dramatiq_namespace,
    make_broker,
)
from stemify.settings import Settings
from stemify.storage import Storage, storage_from_url


@dataclass
class Services:
    settings: Settings
    db: Database
    store: JobStore
    keys: KeyStore
    usage: UsageLedger
    workers: WorkerRegistry
    storage: Storage
    queue: JobQueue
    events: EventBus
    models: ModelCache
    metrics: Metrics
    links: DownloadLinks
    url_policy: URLPolicy
    jobs: JobLifecycle
    recent: RecentJobs
    # Embedded `serve` fetching the default model at start (STEMIFY_AUTO_PULL); else None.
    auto_pull: AutoPull | None = None

    def close(self) -> None:
        self.queue.close()
        self.db.close()


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


def _transport(settings: Settings) -> tuple[JobQueue, EventBus]:
    if settings.redis_url is None:
        return LocalQueue(), LocalEventBus()
    url = settings.redis_url.get_secret_value()
    check_redis_url(url, allow_insecure=settings.allow_insecure_redis)
    queue = RedisQueue(make_broker(url, namespace=dramatiq_namespace(settings.redis_prefix)))
    return queue, RedisEventBus(redis.Redis.from_url(url), prefix=settings.redis_prefix)


def build_storage(settings: Settings) -> Storage:
    return storage_from_url(
        settings.storage,
        s3_addressing_style=settings.s3_addressing_style,
        s3_connect_timeout_s=settings.s3_connect_timeout_s,
        s3_read_timeout_s=settings.s3_read_timeout_s,
    )


def build_services(settings: Settings, metrics: Metrics | None = None) -> Services:
    queue, events = _transport(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database.from_url(settings.database, settings.database_timeout_s)
    db.migrate()
    metrics = metrics or Metrics()
    secret = load_secret(settings)
    policy = URLPolicy(
        allowlist=tuple(settings.url_allowlist), allow_loopback=settings.allow_loopback_urls
    )
    storage = build_storage(settings)
    links = build_links(settings, storage, secret)
    store, usage = JobStore(db), UsageLedger(db)
    recent = RecentJobs(store, settings.job_cache_s)
    result_ttl = timedelta(hours=settings.result_ttl_hours)
    webhooks = Webhooks(
        secret=secret,
        policy=policy,
        links=links,
        base_url=(settings.public_url or "").rstrip("/") + "/api/v1",
        attempts=settings.webhook_attempts,
        metrics=metrics,
    )
    return Services(
        settings=settings,
        db=db,
        store=store,
        keys=KeyStore(db),
        usage=usage,
        workers=WorkerRegistry(db),
        storage=storage,
        queue=queue,
        events=events,
        models=ModelCache(
            loader=functools.partial(_load_engine_model, settings=settings),
            budget_bytes=settings.model_cache_mb << 20,
            observer=metrics,
        ),
        metrics=metrics,
        links=links,
        url_policy=policy,
        jobs=JobLifecycle(
            store, usage, storage, queue, events, metrics, webhooks, result_ttl, recent
        ),
        recent=recent,
        auto_pull=_auto_pull(settings),
    )


def _auto_pull(settings: Settings) -> AutoPull | None:
    """Built here, started by `serve` (other commands never fetch); distributed workers get
    their models baked in or pulled by the operator, and refuse jobs for models they lack."""
    if settings.distributed or not settings.auto_pull:
        return None
    return AutoPull(
        settings.default_model,
        settings.model_dir,
        settings.model_base_url,
        full_catalogue(settings.model_catalogue),
    )


def _load_engine_model(name: str, settings: Settings) -> Any:
    # Imported here: the engine's backends import torch, which wiring alone must not.
    from stemify.engine.backends.choose import load_engine_model

    return load_engine_model(
        name,
        settings.model_dir,
        backend=settings.backend,
        device=settings.device,
        export_dir=settings.export_dir,
    )
