"""Worker processes' outer loops: embedded threads (``stemify serve``) or Dramatiq consumers
(``stemify worker``), both around the same :class:`JobRunner`, plus the maintenance loop."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import datetime

import dramatiq
import torch
from prometheus_client import Gauge

from stemify.clock import now_utc
from stemify.models.autopull import installed_models
from stemify.queue.transport import ACTOR_NAME, QUEUE_NAME, LocalQueue, RedisQueue
from stemify.services import Services
from stemify.worker.maintenance import clean_temp, reconcile, sweep
from stemify.worker.runner import JobRunner

log = logging.getLogger(__name__)


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class _Counter:
    """Jobs running in this process, mirrored in the busy-slots gauge."""

    def __init__(self, gauge: Gauge) -> None:
        self._value = 0
        self._lock = threading.Lock()
        self._gauge = gauge

    def add(self, delta: int) -> None:
        with self._lock:
            self._value += delta
            self._gauge.inc(delta)

    @property
    def value(self) -> int:
        return self._value


class Maintenance:
    """Registers the worker, reconciles the queue and sweeps expired jobs, on a timer."""

    def __init__(self, services: Services, worker_id: str, running: Callable[[], int]) -> None:
        self.services = services
        self.worker_id = worker_id
        self.running = running
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="maintenance", daemon=True)
        self._last_reconcile: datetime | None = None
        self._last_sweep: datetime | None = None

    def start(self) -> None:
        self.tick(at_start=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.services.workers.stopped(self.worker_id)

    def tick(self, *, at_start: bool = False) -> None:
        settings, now = self.services.settings, now_utc()
        models = installed_models(settings.model_dir)
        self.services.workers.seen(self.worker_id, now, self.running(), models)
        due = self._last_reconcile is None or (
            (now - self._last_reconcile).total_seconds() >= settings.reconcile_interval_s
        )
        if due:
            reconcile(self.services, now, at_start=at_start)
            self._last_reconcile = now
        if self._last_sweep is None or (
            (now - self._last_sweep).total_seconds() >= settings.sweep_interval_s
        ):
            sweep(self.services, now)
            clean_temp(self.services)
            self._last_sweep = now

    def _loop(self) -> None:
        while not self._stop.wait(self.services.settings.heartbeat_interval_s):
            try:
                self.tick()
            except Exception:  # a store or Redis hiccup must not kill the loop
                log.exception("maintenance tick failed")


def share_cores(concurrency: int, threads: int | None = None) -> None:
    """Give each concurrent job its share of the cores: torch's own threads per job times the
    jobs at once must not exceed the cores, or OpenMP threads spin against each other and
    every job slows down many times over. ``threads``: this process's share, given by the
    autoscaling supervisor that shares the cores between its children."""
    cores = threads if threads is not None else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores // concurrency))


def preload(services: Services) -> None:
    for name in services.settings.preload_models:
        log.info("preloading model %s", name)
        services.models.get(name)


class EmbeddedWorkers:
    """Threads of the API process taking job ids from the in-process queue."""

    def __init__(self, services: Services, concurrency: int) -> None:
        if not isinstance(services.queue, LocalQueue):
            raise TypeError("embedded workers need the in-process queue")
        self.services = services
        self.queue: LocalQueue = services.queue
        self.worker_id = new_worker_id()
        self.shutdown = threading.Event()
        self.runner = JobRunner(services, self.worker_id, self.shutdown)
        self.busy = _Counter(services.metrics.worker_busy)
        self.maintenance = Maintenance(services, self.worker_id, lambda: self.busy.value)
        self.threads = [
            threading.Thread(target=self._consume, name=f"worker-{i}", daemon=True)
            for i in range(concurrency)
        ]

    def start(self) -> None:
        share_cores(len(self.threads))
        self.services.metrics.worker_slots.inc(len(self.threads))
        preload(self.services)
        self.maintenance.start()
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        """Finish running jobs within the grace period, else hand them back to the store."""
        self.shutdown.set()
        self.queue.stop(len(self.threads))
        for thread in self.threads:
            thread.join()
        self.maintenance.stop()

    def _consume(self) -> None:
        while not self.shutdown.is_set():
            job_id = self.queue.take(timeout=1.0)
            if job_id is None:
                continue
            self.busy.add(1)
            try:
                self.runner.run(job_id)
            except Exception:
                log.exception("worker thread: job %s", job_id)
            finally:
                self.busy.add(-1)


class DramatiqWorkers:
    """``stemify worker``: Dramatiq consumer threads on the Redis queue."""

    def __init__(self, services: Services, concurrency: int, threads: int | None = None) -> None:
        if not isinstance(services.queue, RedisQueue):
            raise TypeError("stemify worker needs STEMIFY_REDIS_URL")
        self.services = services
        self.worker_id = new_worker_id()
        self.shutdown = threading.Event()
        self.runner = JobRunner(services, self.worker_id, self.shutdown)
        self.busy = _Counter(services.metrics.worker_busy)
        self.maintenance = Maintenance(services, self.worker_id, lambda: self.busy.value)
        self.threads = threads
        # Taking a job and retiring are decided under one lock: a retired worker never starts one.
        self._taking = threading.Lock()
        self._retired = False
        queue, broker = services.queue, services.queue.broker

        def run_job(job_id: str) -> None:
            with self._taking:
                if self._retired:
                    # Taken between the retirement and the consumer's stop: sent again for
                    # another worker (the job is still queued in the store).
                    queue.enqueue(job_id)
                    return
                self.busy.add(1)
            try:
                self.runner.run(job_id)
            finally:
                self.busy.add(-1)

        dramatiq.actor(actor_name=ACTOR_NAME, queue_name=QUEUE_NAME, broker=broker)(run_job)
        self.worker = dramatiq.Worker(broker, worker_threads=concurrency, worker_timeout=500)
        # Dramatiq prefetches twice its threads: a busy worker would hold a message that an
        # idle one (or a new autoscaled child) could run now. One message per thread.
        self.worker.queue_prefetch = concurrency
        self.concurrency = concurrency

    def retire_if_idle(self) -> bool:
        """Agree to stop when no job runs here (the autoscaler's scale-down); False: busy."""
        with self._taking:
            if self.busy.value:
                return False
            self._retired = True
            return True

    def start(self) -> None:
        share_cores(self.concurrency, self.threads)
        self.services.metrics.worker_slots.inc(self.concurrency)
        preload(self.services)
        self.maintenance.start()
        self.worker.start()

    def stop(self) -> None:
        self.shutdown.set()
        grace_ms = int((self.services.settings.shutdown_grace_s + 30) * 1000)
        self.worker.stop(timeout=grace_ms)
        self.maintenance.stop()
