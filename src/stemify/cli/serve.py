"""``stemify serve`` and ``stemify worker``: the processes of the job service."""

from __future__ import annotations

import ipaddress
import logging
import signal
import threading
from typing import Any

import click

from stemify.cli.common import fail, services_from
from stemify.settings import Settings

log = logging.getLogger("stemify")


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
    services = services_from(settings, metrics)
    workers = None
    if services.auto_pull is not None:
        services.auto_pull.start()
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
    stopped = threading.Event()

    def stop() -> None:
        """Finish or hand back the running jobs, then close; once, however the server ends.
        uvicorn ends a SIGTERM by raising it again after the app's shutdown, so that shutdown
        (``on_shutdown``) is the last code of this process that runs."""
        if stopped.is_set():
            return
        stopped.set()
        if workers is not None:
            workers.stop()
        services.close()

    app = create_app(services, auth_required=auth == "required", on_shutdown=stop)
    try:
        # Our logging and our request log line (with the request id) instead of uvicorn's.
        # proxy_headers off: the app believes X-Forwarded-* only from STEMIFY_TRUSTED_PROXIES.
        uvicorn.run(app, host=host, port=port, log_config=None, access_log=False,
                    proxy_headers=False, timeout_graceful_shutdown=5)  # fmt: skip
    finally:
        stop()


@click.command()
@click.option("--concurrency", type=int, help="Jobs at once (default: STEMIFY_WORKER_CONCURRENCY).")
@click.option(
    "--autoscale",
    metavar="MIN:MAX",
    help="Run MIN to MAX worker processes, by queue depth (docs/operations/autoscaling.md).",
)
@click.option("--threads", type=click.IntRange(min=1), help="Cores this worker may use (torch).")
def worker(concurrency: int | None, autoscale: str | None, threads: int | None) -> None:
    """Process jobs from the Redis queue (needs STEMIFY_REDIS_URL)."""
    settings = Settings()
    if not settings.distributed:
        fail(
            "stemify worker needs STEMIFY_REDIS_URL; "
            "without it `stemify serve` runs the jobs itself"
        )
    if autoscale is not None:
        if threads is not None:
            fail("--threads and --autoscale: the autoscaler gives each child its share of cores")
        raise SystemExit(_supervise(settings, autoscale, concurrency))
    _work(settings, concurrency, threads)


def _supervise(settings: Settings, autoscale: str, concurrency: int | None) -> int:
    """``--autoscale``: the supervisor of worker children, until SIGTERM or SIGINT; then every
    child drains. Returns the exit code."""
    from stemify.worker.autoscale import Policy, parse_range
    from stemify.worker.supervisor import Supervisor

    try:
        low, high = parse_range(autoscale)
    except ValueError as exc:
        fail(f"--autoscale: {exc}")
    if concurrency is not None:
        settings = settings.model_copy(update={"worker_concurrency": concurrency})
    services = services_from(settings, _observability(settings))
    if settings.worker_metrics_port:
        from stemify.observability.setup import serve_worker_metrics

        serve_worker_metrics(settings.worker_metrics_port)
    supervisor = Supervisor(services, Policy.from_settings(settings, low, high))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: supervisor.stop.set())
    log.info(
        "autoscaler started: %d to %d worker children, concurrency %d each, %d cores",
        low, high, supervisor.policy.concurrency, supervisor.cores,
    )  # fmt: skip
    try:
        return supervisor.run()
    finally:
        services.close()


def _work(settings: Settings, concurrency: int | None, threads: int | None) -> None:
    from stemify.worker.pool import DramatiqWorkers
    from stemify.worker.supervisor import RETIRE_SIGNAL

    metrics = _observability(settings)
    services = services_from(settings, metrics)
    if settings.worker_metrics_port:
        from stemify.observability.setup import serve_worker_metrics

        serve_worker_metrics(settings.worker_metrics_port, settings.worker_metrics_host)
    workers = DramatiqWorkers(services, concurrency or settings.worker_concurrency, threads)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    def retire(*_: object) -> None:
        # The autoscaling supervisor's scale-down: only an idle worker goes.
        if workers.retire_if_idle():
            log.info("retiring: idle, asked to stop by the autoscaler")
            stop.set()

    signal.signal(RETIRE_SIGNAL, retire)
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
