"""Status polls answered from memory for a fraction of a second.

A job being watched is read by every poll of every client watching it, many times a second
under load, while it changes a few times a minute. :class:`RecentJobs` keeps each job read for
``max_age_s`` (``STEMIFY_JOB_CACHE_S``) and forgets it at once when this process says the job
changed (:meth:`stemify.jobs.lifecycle.JobLifecycle.changed`: its own API calls and, in
embedded mode, its workers). A write by another process (a distributed worker, another API
replica, the command line) shows within ``max_age_s``. The store stays the truth: nothing is
written here, and a missing job is never remembered."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from stemify.jobs.model import Job

# Jobs kept at most; beyond it the oldest entries go (each is a few kB).
CAPACITY = 10_000


class JobReader(Protocol):
    def get(self, job_id: str) -> Job | None: ...


class RecentJobs:
    def __init__(
        self,
        store: JobReader,
        max_age_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        capacity: int = CAPACITY,
    ) -> None:
        self._store = store
        self.max_age_s = max_age_s
        self._clock = clock
        self._capacity = capacity
        self._jobs: dict[str, tuple[float, Job]] = {}
        self._lock = threading.Lock()
        # Bumped by every forget: a read that overlapped one may hold the state before the
        # change, so it is answered but not kept.
        self._generation = 0

    def fresh(self, job_id: str) -> Job | None:
        """The job if it was read less than ``max_age_s`` ago (and has not changed since, as
        far as this process knows); None otherwise. Never blocks."""
        kept = self._jobs.get(job_id)
        if kept is not None and self._clock() < kept[0]:
            return kept[1]
        return None

    def get(self, job_id: str) -> Job | None:
        """The job as the store had it at most ``max_age_s`` ago (never before a change this
        process announced), or None if it does not exist. Blocks when it reads the store."""
        kept = self.fresh(job_id)
        if kept is not None or self.max_age_s <= 0:
            return kept if kept is not None else self._store.get(job_id)
        now = self._clock()
        generation = self._generation
        job = self._store.get(job_id)
        if job is None:
            return None
        with self._lock:
            if generation == self._generation:
                self._jobs.pop(job_id, None)  # re-inserted last: the oldest go first
                self._jobs[job_id] = (now + self.max_age_s, job)
                while len(self._jobs) > self._capacity:
                    del self._jobs[next(iter(self._jobs))]
        return job

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._generation += 1
            self._jobs.pop(job_id, None)
