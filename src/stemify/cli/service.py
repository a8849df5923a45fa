"""``stemify serve | worker | jobs | keys | config``: running and operating the job service."""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import signal
import threading
import uuid
from datetime import timedelta
from typing import Any

import click

from stemify.cli.common import fail
from stemify.errors import StemifyError
from stemify.jobs.model import JobStatus
from stemify.jobs.store import KeyLimits, hash_key, now_utc
from stemify.redaction import redact_url
from stemify.settings import Settings

log = logging.getLogger("stemify")


def _services(settings: Settings, metrics: Any = None) -> Any:
    from sqlalchemy.exc import OperationalError

    from stemify.services import build_services

    try:
        return build_services(settings, metrics)
    except StemifyError as exc:
        fail(exc.message)
    except OperationalError as exc:
        # One line, and never the URL: it may hold the password.
        reason = str(exc.orig or exc).strip().splitlines()[0]
        fail(f"cannot open the database (STEMIFY_DATABASE_URL): {redact_url(reason)}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _observability(settings: Settings) -> Any:
    """Logs, metrics and error tracking, before anything else of the process starts."""
    from stemify.observability.setup import start_process

    return start_process(settings)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def serve(host: str, port: int) -> None:
    """Start the HTTP API (and, without STEMIFY_REDIS_URL, the in-process worker)."""
    import uvicorn

    from stemify.api.app import create_app
    from stemify.worker.pool import EmbeddedWorkers

    settings = Settings()
    metrics = _observability(settings)
    auth = settings.auth or ("off" if _is_loopback(host) else "required")
    services = _services(settings, metrics)
    workers = None
    if not settings.distributed:
        workers = EmbeddedWorkers(services, settings.worker_concurrency)
        workers.start()
        log.info("embedded mode: %d in-process worker(s), data in %s", len(workers.threads),
                 settings.data_dir.resolve())  # fmt: skip
    else:
        log.info("distributed mode: jobs go to the Redis queue; run `stemify worker` processes")
    if auth == "off":
        log.warning(
            "authentication is OFF (serving on loopback %s for one local user); "
            "set STEMIFY_AUTH=required to require API keys", host,
        )  # fmt: skip
    app = create_app(services, auth_required=auth == "required")
    try:
        # Our logging and our request log line (with the request id) instead of uvicorn's.
        # proxy_headers off: the app believes X-Forwarded-* only from STEMIFY_TRUSTED_PROXIES.
        uvicorn.run(app, host=host, port=port, log_config=None, access_log=False,
                    proxy_headers=False, timeout_graceful_shutdown=5)  # fmt: skip
    finally:
        if workers is not None:
            workers.stop()
        services.close()


@click.command()
@click.option("--concurrency", type=int, help="Jobs at once (default: STEMIFY_WORKER_CONCURRENCY).")
def worker(concurrency: int | None) -> None:
    """Process jobs from the Redis queue (needs STEMIFY_REDIS_URL)."""
    from stemify.worker.pool import DramatiqWorkers

    settings = Settings()
    if not settings.distributed:
        fail(
            "stemify worker needs STEMIFY_REDIS_URL; "
            "without it `stemify serve` runs the jobs itself"
        )
    metrics = _observability(settings)
    services = _services(settings, metrics)
    if settings.worker_metrics_port:
        from stemify.observability.setup import serve_worker_metrics

        serve_worker_metrics(settings.worker_metrics_port)
    workers = DramatiqWorkers(services, concurrency or settings.worker_concurrency)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    workers.start()
    log.info(
        "worker %s started (%s)",
        workers.worker_id,
        f"concurrency {concurrency or settings.worker_concurrency}",
    )
    stop.wait()
    log.info("stopping: finishing running jobs within %.0f s", settings.shutdown_grace_s)
    workers.stop()
    services.close()


# ---- jobs -------------------------------------------------------------------------------------


@click.group()
def jobs() -> None:
    """List, retry and clean up jobs (operators)."""


@jobs.command("list")
@click.option("--status", type=click.Choice([s.value for s in JobStatus]))
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def jobs_list(status: str | None, limit: int, as_json: bool) -> None:
    """Every caller's jobs, newest first."""
    from stemify.jobs.render import job_to_dict

    services = _services(Settings())
    found, _ = services.store.list_jobs(
        owner=None, all_owners=True, status=JobStatus(status) if status else None, limit=limit
    )
    if as_json:
        click.echo(json.dumps([job_to_dict(j) for j in found], indent=2))
        return
    click.echo(f"{'ID':<32} {'STATUS':<10} {'PROGRESS':>8} {'MODEL':<12} CREATED")
    for j in found:
        click.echo(
            f"{j.id:<32} {j.status.value:<10} {j.progress:>7.0f}% {j.spec.model:<12} "
            f"{j.created_at:%Y-%m-%d %H:%M:%S}"
            + (f"  {j.error_code}: {j.error_message}" if j.error_code else "")
        )


@jobs.command("retry")
@click.argument("job_ids", nargs=-1)
@click.option("--all-failed", is_flag=True, help="Retry every failed job.")
def jobs_retry(job_ids: tuple[str, ...], all_failed: bool) -> None:
    """Put failed or canceled jobs back on the queue."""
    services = _services(Settings())
    ids = list(job_ids)
    if all_failed:
        found, _ = services.store.list_jobs(
            owner=None, all_owners=True, status=JobStatus.FAILED, limit=10_000
        )
        ids += [j.id for j in found]
    if not ids:
        fail("name job ids or use --all-failed")
    retried = 0
    for job_id in ids:
        if services.store.retry(job_id, now_utc()):
            services.queue.enqueue(job_id)
            retried += 1
        else:
            click.echo(f"stemify: {job_id}: not found, or not failed or canceled", err=True)
    click.echo(f"retried {retried} job(s)")


@jobs.command("cleanup")
@click.option("--failed", is_flag=True, help="Also delete failed and canceled jobs.")
@click.option("--older-than-hours", type=float, default=0.0, show_default=True)
def jobs_cleanup(failed: bool, older_than_hours: float) -> None:
    """Expire results past their TTL now; with --failed, delete failed and canceled jobs."""
    from stemify.worker.maintenance import cleanup, sweep

    services = _services(Settings())
    now = now_utc()
    swept = sweep(services, now)
    click.echo(f"expired {len(swept)} job(s)")
    if failed:
        removed = cleanup(
            services, [JobStatus.FAILED, JobStatus.CANCELED], timedelta(hours=older_than_hours), now
        )
        click.echo(f"deleted {removed} failed or canceled job(s)")


# ---- keys -------------------------------------------------------------------------------------


@click.group()
def keys() -> None:
    """Create, list and revoke API keys."""


_LIMIT_OPTIONS = {
    # option: (KeyLimits field, type, help)
    "rate": ("rate_per_minute", int, "Job submissions per minute."),
    "read_rate": ("read_rate_per_minute", int, "Other requests (status, downloads) per minute."),
    "max_running": ("max_running", int, "Jobs queued or running at once."),
    "daily_minutes": ("daily_minutes", float, "Minutes of audio per UTC day."),
}


def _limit_options(command: Any) -> Any:
    """--rate, --read-rate, --max-running, --daily-minutes: a number (0: no limit) or
    `default` (the STEMIFY_ setting)."""
    for option, (_, _kind, text) in reversed(_LIMIT_OPTIONS.items()):
        flag = "--" + option.replace("_", "-")
        command = click.option(flag, option, metavar="N|default", help=text)(command)
    return command


def _limit_changes(given: dict[str, str | None]) -> dict[str, int | float | None]:
    changes: dict[str, int | float | None] = {}
    for option, raw in given.items():
        if raw is None:
            continue
        field, kind, _ = _LIMIT_OPTIONS[option]
        flag = "--" + option.replace("_", "-")
        if raw == "default":
            changes[field] = None
            continue
        try:
            value = kind(raw)
        except ValueError:
            fail(f"{flag} takes a number or `default`, not {raw!r}")
        if value < 0:
            fail(f"{flag} cannot be negative (0 turns the limit off)")
        changes[field] = value
    return changes


def _describe_limits(limits: KeyLimits) -> str:
    def show(value: float | None) -> str:
        return "default" if value is None else f"{value:g}"

    return (
        f"rate={show(limits.rate_per_minute)}/min reads={show(limits.read_rate_per_minute)}/min "
        f"running={show(limits.max_running)} audio={show(limits.daily_minutes)}min/day"
    )


@keys.command("create")
@click.option("--name", required=True)
@click.option("--admin", is_flag=True, help="The key sees every caller's jobs.")
@_limit_options
def keys_create(name: str, admin: bool, **limits: str | None) -> None:
    """Create a key and print it once (only its hash is stored)."""
    own = KeyLimits(**_limit_changes(limits))  # type: ignore[arg-type]
    services = _services(Settings())
    secret = f"sk_{secrets.token_urlsafe(32)}"
    key_id = uuid.uuid4().hex
    prefix = secret[:10]
    services.store.add_key(key_id, name, hash_key(secret), prefix, admin, now_utc(), own)
    click.echo(secret)
    click.echo(
        f"key {prefix}… ({'admin' if admin else 'user'}; {_describe_limits(own)}) created; "
        "it is not shown again",
        err=True,
    )


@keys.command("update")
@click.argument("key")
@_limit_options
def keys_update(key: str, **limits: str | None) -> None:
    """Change a key's limits, by prefix (as listed) or id; `default` follows the settings."""
    changes = _limit_changes(limits)
    if not changes:
        fail("nothing to change: give --rate, --read-rate, --max-running or --daily-minutes")
    services = _services(Settings())
    updated = services.store.update_key_limits(key, changes)
    if updated is None:
        fail(f"no active key {key!r}")
    click.echo(f"key {updated.prefix}: {_describe_limits(updated.limits)}")


@keys.command("list")
def keys_list() -> None:
    services = _services(Settings())
    click.echo(f"{'PREFIX':<12} {'NAME':<24} {'ROLE':<6} {'CREATED':<20} {'REVOKED':<17} LIMITS")
    for k in services.store.api_keys():
        revoked = f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "-"
        role = "admin" if k.admin else "user"
        click.echo(
            f"{k.prefix:<12} {k.name:<24} {role:<6} {k.created_at:%Y-%m-%d %H:%M:%S}  "
            f"{revoked:<17} {_describe_limits(k.limits)}"
        )


@keys.command("revoke")
@click.argument("key")
def keys_revoke(key: str) -> None:
    """Revoke by prefix (as listed) or id."""
    services = _services(Settings())
    if not services.store.revoke_key(key, now_utc()):
        fail(f"no active key {key!r}")
    click.echo(f"revoked {key}")


# ---- config -----------------------------------------------------------------------------------


@click.group()
def config() -> None:
    """Show the effective settings."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True)
def config_show(as_json: bool) -> None:
    """Every STEMIFY_ setting and its value; secrets are masked."""
    settings = Settings()
    # Secret settings print as "**********"; passwords inside any other URL are masked too.
    values = {
        name: redact_url(value) if isinstance(value, str) else value
        for name, value in json.loads(settings.model_dump_json()).items()
    }
    values["database_url"] = values["database_url"] or "(SQLite in data_dir)"
    if as_json:
        click.echo(json.dumps(values, indent=2))
        return
    for name, value in values.items():
        click.echo(f"STEMIFY_{name.upper()}={'' if value is None else value}")
