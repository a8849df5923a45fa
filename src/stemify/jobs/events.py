"""Job events (progress, status) fanned out to Server-Sent Events listeners.

Events only wake listeners up early: the store stays the truth, and a listener that misses
one still catches up from the store on its next poll.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import redis


class Subscription(Protocol):
    def get(self, timeout: float) -> dict[str, Any] | None: ...


class EventBus(Protocol):
    def publish(self, job_id: str, event: dict[str, Any]) -> None: ...

    def subscribe(self, job_id: str) -> Any:
        """A context manager yielding a :class:`Subscription`."""
        ...


class _LocalSubscription:
    def __init__(self) -> None:
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=1000)

    def get(self, timeout: float) -> dict[str, Any] | None:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None


class LocalEventBus:
    """Embedded mode: API and workers share one process."""

    def __init__(self) -> None:
        self._subscribers: dict[str, list[_LocalSubscription]] = {}
        self._lock = threading.Lock()

    def publish(self, job_id: str, event: dict[str, Any]) -> None:
        with self._lock:
            targets = list(self._subscribers.get(job_id, ()))
        for subscription in targets:
            # A stalled listener drops events and catches up from the store.
            with contextlib.suppress(queue.Full):
                subscription.queue.put_nowait(event)

    @contextmanager
    def subscribe(self, job_id: str) -> Iterator[_LocalSubscription]:
        subscription = _LocalSubscription()
        with self._lock:
            self._subscribers.setdefault(job_id, []).append(subscription)
        try:
            yield subscription
        finally:
            with self._lock:
                listeners = self._subscribers.get(job_id, [])
                listeners.remove(subscription)
                if not listeners:
                    self._subscribers.pop(job_id, None)


class _RedisSubscription:
    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub

    def get(self, timeout: float) -> dict[str, Any] | None:
        message = self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
        if message is None or message.get("type") != "message":
            return None
        try:
            event: dict[str, Any] = json.loads(message["data"])
        except (ValueError, TypeError):
            return None
        return event


class RedisEventBus:
    """Distributed mode: Redis pub/sub, so a worker's progress reaches every API process."""

    def __init__(self, client: redis.Redis, prefix: str = "stemify") -> None:
        self._client = client
        self._prefix = prefix

    def _channel(self, job_id: str) -> str:
        return f"{self._prefix}:events:{job_id}"

    def publish(self, job_id: str, event: dict[str, Any]) -> None:
        # Progress is best effort: the store has the state.
        with contextlib.suppress(redis.RedisError):
            self._client.publish(self._channel(job_id), json.dumps(event))

    @contextmanager
    def subscribe(self, job_id: str) -> Iterator[_RedisSubscription]:
        pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
        pubsub.subscribe(self._channel(job_id))
        try:
            yield _RedisSubscription(pubsub)
        finally:
            pubsub.close()
