"""Requests per minute per caller, on the ``limits`` library: a moving window kept in Redis
when distributed (every API process shares it), in memory in embedded mode.

When Redis cannot be reached the limiter lets requests through (and says so in the log):
job status and downloads come from the store and storage, and should not fail because the
counters are out of reach."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from stemify.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    limit: int
    remaining: int
    reset_in_s: float


class RateLimiter:
    def __init__(self, storage_uri: str, key_prefix: str) -> None:
        self._storage = storage_from_string(
            storage_uri, key_prefix=key_prefix, wrap_exceptions=True
        )
        self._strategy = MovingWindowRateLimiter(self._storage)

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        if settings.redis_url is None:
            return cls("memory://", settings.redis_prefix)
        return cls(settings.redis_url.get_secret_value(), f"{settings.redis_prefix}-limits")

    def hit(self, bucket: str, identity: str, per_minute: int) -> float | None:
        """Count one request; None when allowed, else the seconds until one is allowed."""
        item = RateLimitItemPerMinute(per_minute)
        try:
            if self._strategy.hit(item, bucket, identity):
                return None
            reset = self._strategy.get_window_stats(item, bucket, identity).reset_time
        except StorageError as exc:
            log.warning(
                "rate limits not enforced: their store is unreachable (%s)",
                type(exc.storage_error).__name__,
            )
            return None
        return max(1.0, math.ceil(reset - time.time()))

    def window(self, bucket: str, identity: str, per_minute: int) -> Window:
        item = RateLimitItemPerMinute(per_minute)
        try:
            stats = self._strategy.get_window_stats(item, bucket, identity)
        except StorageError:
            return Window(per_minute, per_minute, 0.0)  # unknown: as if unused
        return Window(per_minute, stats.remaining, max(0.0, stats.reset_time - time.time()))
