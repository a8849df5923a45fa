"""Prometheus metrics of every stemify process, added up by the API's ``/metrics``.

``stemify serve`` and ``stemify worker`` run in multiprocess mode: each process writes its
counters and histograms to memory-mapped files in one directory (``STEMIFY_METRICS_DIR``, by
default ``data_dir/metrics``) and ``/metrics`` reads them all, so jobs run by worker processes
show up in the API's numbers. State that lives in the store (queue depth, workers alive) is
read at scrape time by :class:`StoreCollector`, so it is right whichever process is asked.

One :class:`Metrics` per process, built after :func:`enable_multiprocess`, is passed down in
``Services``; call sites use its small methods.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from stemify import __version__

ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# API latency: from a few milliseconds (status reads) to an upload of hundreds of megabytes.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Stages of a job: a download or a separation of a two-hour mix can take most of an hour.
STAGE_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
# Audio seconds per processing second: below 1 a job takes longer than the song lasts.
RTF_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)


def enable_multiprocess(directory: Path) -> None:
    """Point this process (and prometheus_client) at the shared metrics directory.

    Every file of a process that no longer runs is deleted first, counters included: a new
    process may reuse a dead one's pid, and the directory must not grow with every restart
    (Prometheus reads the drop in a counter as a reset). Processes still running on this
    machine keep theirs. Must run before :class:`Metrics` is built."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.glob("*.db"):
        pid = _pid_of(path)
        if pid is not None and not _alive(pid):
            path.unlink(missing_ok=True)
    os.environ[ENV_VAR] = str(directory)
    # prometheus_client picks its value class when first imported; it may have been imported
    # before this process knew its metrics directory.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def multiprocess_dir() -> Path | None:
    value = os.environ.get(ENV_VAR)
    return Path(value) if value else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid_of(path: Path) -> int | None:
    """The pid in a prometheus_client file name (``counter_1234.db``)."""
    text = path.stem.rsplit("_", 1)[-1]
    return int(text) if text.isdigit() else None


def remove_dead(directory: Path) -> list[int]:
    """Drop the live gauges of processes that have exited (their counters stay, so totals do
    not fall when a worker stops); returns their pids."""
    dead: set[int] = set()
    for path in directory.glob("*.db"):
        pid = _pid_of(path)
        if pid is not None and not _alive(pid):
            dead.add(pid)
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
    return sorted(dead)


class Metrics:
    """Every metric a stemify process records. ``registry`` is where they are collected in
    a single process; in multiprocess mode the files are what counts."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "stemify_http_requests", "HTTP requests answered, by route template, method and "
            "status.", ["route", "method", "status"], registry=r,
        )  # fmt: skip
        self.http_latency = Histogram(
            "stemify_http_request_duration_seconds",
            "Time until the response headers were sent (streams count to their first byte).",
            ["route", "method"], buckets=HTTP_BUCKETS, registry=r,
        )  # fmt: skip
        self.jobs_submitted = Counter(
            "stemify_jobs_submitted", "Jobs accepted, by model and source (upload or url).",
            ["model", "source"], registry=r,
        )  # fmt: skip
        self.jobs_finished = Counter(
            "stemify_jobs_finished",
            "Jobs that ended, by model, status (succeeded, failed, canceled) and error code.",
            ["model", "status", "error_code"], registry=r,
        )  # fmt: skip
        self.cache_hits = Counter(
            "stemify_dedup_cache_hits", "Jobs completed from the stems of an identical job.",
            ["model"], registry=r,
        )  # fmt: skip
        self.stage_seconds = Histogram(
            "stemify_job_stage_seconds", "Processing time of each stage of a job, by model.",
            ["stage", "model"], buckets=STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.processing_seconds = Histogram(
            "stemify_job_processing_seconds",
            "Processing time of a succeeded job from claim to stored stems, by model.",
            ["model"], buckets=STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.realtime_factor = Histogram(
            "stemify_job_realtime_factor",
            "Audio seconds separated per second of processing (decode, separate, encode).",
            ["model"], buckets=RTF_BUCKETS, registry=r,
        )  # fmt: skip
        self.model_loads = Counter(
            "stemify_model_cache_loads", "Models loaded into a process's cache.", ["model"],
            registry=r,
        )  # fmt: skip
        self.model_evictions = Counter(
            "stemify_model_cache_evictions", "Models dropped from a process's cache.", ["model"],
            registry=r,
        )  # fmt: skip
        self.model_bytes = Gauge(
            "stemify_model_cache_bytes", "Memory held by cached models, over live processes.",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.worker_slots = Gauge(
            "stemify_worker_slots", "Jobs the live worker processes can run at once.",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.worker_busy = Gauge(
            "stemify_worker_busy_slots", "Jobs the live worker processes are running now.",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.autoscaler_desired = Gauge(
            "stemify_autoscaler_desired_workers",
            "Worker processes the autoscaling supervisors want now.",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.autoscaler_current = Gauge(
            "stemify_autoscaler_current_workers",
            "Worker processes the autoscaling supervisors run now (starting and retiring too).",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.autoscaler_events = Counter(
            "stemify_autoscaler_scale_events",
            "Scale decisions of the autoscaling supervisors, by direction (up, down) and reason.",
            ["direction", "reason"], registry=r,
        )  # fmt: skip
        self.webhooks = Counter(
            "stemify_webhook_deliveries", "Webhook deliveries, by outcome (delivered, failed).",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.build_info = Gauge(
            "stemify_build_info", "The stemify version, as a label.", ["version"], registry=r,
            multiprocess_mode="max",
        )  # fmt: skip
        self.build_info.labels(version=__version__).set(1)

    # ---- call sites -------------------------------------------------------------------------

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_latency.labels(route, method).observe(seconds)

    def job_submitted(self, model: str, source: str) -> None:
        self.jobs_submitted.labels(model, source).inc()

    def job_finished(
        self, model: str, status: str, error_code: str | None, *, cache_hit: bool = False
    ) -> None:
        self.jobs_finished.labels(model, status, error_code or "").inc()
        if cache_hit:
            self.cache_hits.labels(model).inc()

    def job_processed(
        self, model: str, stage_seconds: dict[str, float], audio_seconds: float | None
    ) -> None:
        """A succeeded job's timings: each stage, the total, and the real-time factor."""
        for stage, seconds in stage_seconds.items():
            self.stage_seconds.labels(stage, model).observe(seconds)
        self.processing_seconds.labels(model).observe(sum(stage_seconds.values()))
        work = sum(stage_seconds.get(s, 0.0) for s in ("decoding", "separating", "encoding"))
        if audio_seconds and work > 0:
            self.realtime_factor.labels(model).observe(audio_seconds / work)

    def model_loaded(self, name: str, nbytes: int) -> None:
        self.model_loads.labels(name).inc()
        self.model_bytes.inc(nbytes)

    def model_evicted(self, name: str, nbytes: int) -> None:
        self.model_evictions.labels(name).inc()
        self.model_bytes.dec(nbytes)

    def webhook(self, delivered: bool) -> None:
        self.webhooks.labels("delivered" if delivered else "failed").inc()


@dataclass(frozen=True)
class StoreSnapshot:
    queued: int
    running: int
    oldest_queued_age_s: float | None
    workers: int
    free_bytes: int | None
    total_bytes: int | None
    lost_workers: int = 0  # stopped beating within the last hour without stopping cleanly


class StoreCollector(Collector):
    """Gauges read from the store (and storage) at scrape time: the same answer from any API
    process, and workers on other machines count too."""

    def __init__(self, read: Callable[[], StoreSnapshot]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        snapshot = self._read()
        yield _gauge("stemify_queue_depth", "Jobs waiting in the queue.", snapshot.queued)
        yield _gauge(
            "stemify_queue_oldest_age_seconds",
            "Age of the oldest queued job (0 when the queue is empty).",
            snapshot.oldest_queued_age_s or 0.0,
        )
        yield _gauge("stemify_jobs_running", "Jobs running now.", snapshot.running)
        yield _gauge(
            "stemify_workers_alive", "Worker processes that beat recently.", snapshot.workers
        )
        yield _gauge(
            "stemify_workers_lost",
            "Worker processes that stopped beating in the last hour without stopping cleanly.",
            snapshot.lost_workers,
        )
        if snapshot.free_bytes is not None and snapshot.total_bytes is not None:
            yield _gauge(
                "stemify_storage_free_bytes", "Free space where results are stored.",
                snapshot.free_bytes,
            )  # fmt: skip
            yield _gauge(
                "stemify_storage_size_bytes", "Size of the file system holding results.",
                snapshot.total_bytes,
            )  # fmt: skip


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def exposition(metrics: Metrics, store: Collector | None = None) -> bytes:
    """The text of ``/metrics``: every process's metrics (or this one's), then the store's."""
    directory = multiprocess_dir()
    if directory is not None:
        remove_dead(directory)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    else:
        registry = metrics.registry
    text = generate_latest(registry)
    if store is not None:
        extra = CollectorRegistry()
        extra.register(store)
        text += generate_latest(extra)
    return text
