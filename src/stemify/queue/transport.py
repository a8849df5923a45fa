"""The queue is only a transport: it carries job ids from the API to workers.

The store decides what a job is; a lost or duplicated message is repaired by the reconciler
and made harmless by the store's idempotent claim.
"""

from __future__ import annotations

import json
import queue
import threading
from typing import Protocol

import dramatiq
import dramatiq.errors
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name

from stemify.errors import QueueUnavailableError

QUEUE_NAME = "stemify-jobs"
ACTOR_NAME = "stemify_run_job"


class JobQueue(Protocol):
    def enqueue(self, job_id: str, delay_s: float = 0.0) -> None: ...

    def pending(self) -> set[str]:
        """Job ids whose message waits in (or is being taken from) the queue."""
        ...

    def depth(self) -> int: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


class LocalQueue:
    """Embedded mode: an in-process queue served by worker threads of the same process."""

    _STOP = ""

    def __init__(self) -> None:
        self._queue: queue.Queue[str] = queue.Queue()
        self._pending: set[str] = set()
        self._lock = threading.Lock()

    def enqueue(self, job_id: str, delay_s: float = 0.0) -> None:
        if delay_s > 0:
            timer = threading.Timer(delay_s, self.enqueue, (job_id,))
            timer.daemon = True
            timer.start()
            return
        with self._lock:
            if job_id in self._pending:
                return
            self._pending.add(job_id)
        self._queue.put(job_id)

    def take(self, timeout: float) -> str | None:
        """Next job id, or None on timeout or after ``stop``."""
        try:
            job_id = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        with self._lock:
            self._pending.discard(job_id)
        return job_id or None

    def stop(self, consumers: int) -> None:
        for _ in range(consumers):
            self._queue.put(self._STOP)

    def pending(self) -> set[str]:
        with self._lock:
            return set(self._pending)

    def depth(self) -> int:
        with self._lock:
            return len(self._pending)

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None


def dramatiq_namespace(redis_prefix: str) -> str:
    """Dramatiq's key namespace for ``STEMIFY_REDIS_PREFIX``."""
    return f"{redis_prefix}-dramatiq"


def messages_key(namespace: str, queue_name: str = QUEUE_NAME) -> str:
    """Dramatiq's hash of a queue's messages, from their enqueue to their ack: those waiting
    plus those a worker has taken (prefetched or running). KEDA's trigger counts this key
    (deploy/k8s/keda/scaledobject.yaml)."""
    return f"{namespace}:{queue_name}.msgs"


def make_broker(redis_url: str, namespace: str = "dramatiq") -> RedisBroker:
    broker = RedisBroker(url=redis_url, namespace=namespace)  # type: ignore[no-untyped-call]
    # Our own reconciler re-enqueues; dramatiq's retries would run a failed job again.
    for middleware in list(broker.middleware):
        if type(middleware).__name__ in ("Retries", "TimeLimit", "AgeLimit"):
            broker.middleware.remove(middleware)
    broker.declare_queue(QUEUE_NAME)
    return broker


class RedisQueue:
    """Distributed mode: Dramatiq messages on Redis, consumed by ``stemify worker``."""

    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker

    def enqueue(self, job_id: str, delay_s: float = 0.0) -> None:
        """``delay_s``: Dramatiq's delay queue holds the message that long (a job handed on by a
        worker that lacks its model must not bounce between such workers at full speed).
        Raises QueueUnavailableError when Redis cannot be reached."""
        message: dramatiq.Message[None] = dramatiq.Message(
            queue_name=QUEUE_NAME,
            actor_name=ACTOR_NAME,
            args=(job_id,),
            kwargs={},
            options={},
        )
        try:
            self.broker.enqueue(message, delay=int(delay_s * 1000) if delay_s > 0 else None)
        except (redis.RedisError, dramatiq.errors.ConnectionError) as exc:
            raise QueueUnavailableError(f"the queue is unreachable: {type(exc).__name__}") from exc

    def _messages(self) -> list[bytes | str]:
        # Delayed messages too: the reconciler must not send a second one for such a job.
        found: list[bytes | str] = []
        for name in (QUEUE_NAME, dq_name(QUEUE_NAME)):
            found += self.broker.client.hvals(messages_key(self.broker.namespace, name))
        return found

    def pending(self) -> set[str]:
        found = set()
        for raw in self._messages():
            try:
                found.add(str(json.loads(raw)["args"][0]))
            except (ValueError, KeyError, IndexError, TypeError):
                continue
        return found

    def depth(self) -> int:
        return len(self._messages())

    def ping(self) -> None:
        self.broker.client.ping()

    def close(self) -> None:
        self.broker.close()
