""" "Job X changed": said by whoever changes a job, waited for by SSE streams.

An event carries nothing but the job id: a waiter that wakes up reads the job from the store,
which stays the truth, so a missed or doubled event costs at most one poll interval.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

import redis

# A flood of changes is one wake-up: a waiter drains at most this many queued messages.
_DRAIN = 1000


class Watch(Protocol):
    def wait(self, timeout: float) -> bool:
        """Block until the job changed since the last wait (True) or ``timeout`` passed."""
        ...


class EventBus(Protocol):
    def changed(self, job_id: str) -> None: ...

    def watch(self, job_id: str) -> AbstractContextManager[Watch]:
        """Subscribed on entry: a change after entering is never missed."""
        ...


class _LocalWatch:
    def __init__(self) -> None:
        self.flag = threading.Event()

    def wait(self, timeout: float) -> bool:
        changed = self.flag.wait(timeout)
        self.flag.clear()
        return changed


class LocalEventBus:
    """Embedded mode: API and workers share one process."""

    def __init__(self) -> None:
        self._watches: dict[str, list[_LocalWatch]] = {}
        self._lock = threading.Lock()

    def changed(self, job_id: str) -> None:
        with self._lock:
            targets = list(self._watches.get(job_id, ()))
        for watch in targets:
            watch.flag.set()

    @contextmanager
    def watch(self, job_id: str) -> Iterator[_LocalWatch]:
        watch = _LocalWatch()
        with self._lock:
            self._watches.setdefault(job_id, []).append(watch)
        try:
            yield watch
        finally:
            with self._lock:
                watches = self._watches.get(job_id, [])
                watches.remove(watch)
                if not watches:
                    self._watches.pop(job_id, None)


# While Redis is away a waiter polls the store at this pace (it is told "changed" each time).
_OUTAGE_POLL_S = 1.0


class _RedisWatch:
    """Waits on pub/sub; while Redis is unreachable, says "changed" once a poll interval, so
    the stream keeps going from the store (redis-py subscribes again once Redis is back)."""

    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub

    def _message(self, timeout: float) -> bool:
        message = self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
        return message is not None and message.get("type") == "message"

    def wait(self, timeout: float) -> bool:
        try:
            return self._wait(timeout)
        except redis.RedisError:
            time.sleep(min(timeout, _OUTAGE_POLL_S))
            return True

    def _wait(self, timeout: float) -> bool:
        if not self._message(timeout):
            return False
        for _ in range(_DRAIN):
            if not self._message(0):
                break
        return True


class RedisEventBus:
    """Distributed mode: Redis pub/sub, so a worker's change reaches every API process."""

    def __init__(self, client: redis.Redis, prefix: str = "stemify") -> None:
        self._client = client
        self._prefix = prefix

    def _channel(self, job_id: str) -> str:
        return f"{self._prefix}:events:{job_id}"

    def changed(self, job_id: str) -> None:
        # Best effort: the store has the state, and waiters poll it anyway.
        with contextlib.suppress(redis.RedisError):
            self._client.publish(self._channel(job_id), "changed")

    @contextmanager
    def watch(self, job_id: str) -> Iterator[_RedisWatch]:
        pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
        with contextlib.suppress(redis.RedisError):  # away: the watch polls until it is back
            pubsub.subscribe(self._channel(job_id))
        try:
            yield _RedisWatch(pubsub)
        finally:
            with contextlib.suppress(redis.RedisError):
                pubsub.close()
