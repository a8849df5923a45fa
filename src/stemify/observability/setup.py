"""What ``stemify serve`` and ``stemify worker`` set up first: logs, metrics, error tracking."""

from __future__ import annotations

from pathlib import Path

from stemify.observability.logging import configure_logging
from stemify.observability.metrics import Metrics, enable_multiprocess, multiprocess_dir
from stemify.observability.sentry import init_sentry
from stemify.redaction import secret_values
from stemify.settings import Settings


def metrics_dir(settings: Settings) -> Path:
    return (settings.metrics_dir or settings.data_dir / "metrics").resolve()


def start_process(settings: Settings) -> Metrics:
    """Configure this process once; the returned metrics go into its ``Services``."""
    configure_logging(settings.log_level, settings.log_format, secrets=secret_values(settings))
    enable_multiprocess(metrics_dir(settings))
    init_sentry(settings)
    return Metrics()


def serve_worker_metrics(port: int, host: str = "0.0.0.0") -> None:
    """A worker on another machine than the API: its own /metrics on ``host:port``."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(multiprocess_dir()))  # type: ignore[no-untyped-call]
    start_http_server(port, addr=host, registry=registry)
