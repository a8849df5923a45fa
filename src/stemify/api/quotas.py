"""Per-caller limits: requests per minute (submissions and reads), jobs queued or running at
once, and minutes of audio per UTC day. Over a limit: 429 with Retry-After and which limit."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from stemify.api.errors import ApiError
from stemify.api.rate_limits import RateLimiter
from stemify.jobs.store import JobStore, KeyLimits
from stemify.settings import Settings

SUBMIT = "submit"
READ = "read"
# Nothing says when a running job will end; a client polling more often gains nothing.
RUNNING_RETRY_S = 30


@dataclass(frozen=True)
class Limits:
    """Effective limits of one caller; 0 means no limit."""

    submit_per_minute: int
    reads_per_minute: int
    max_running: int
    daily_audio_minutes: float

    @classmethod
    def of(cls, settings: Settings, own: KeyLimits | None = None) -> Limits:
        own = own or KeyLimits()

        def pick(mine: float | None, default: float) -> float:
            return default if mine is None else mine

        return cls(
            submit_per_minute=int(pick(own.rate_per_minute, settings.rate_submit_per_minute)),
            reads_per_minute=int(pick(own.read_rate_per_minute, settings.rate_read_per_minute)),
            max_running=int(pick(own.max_running, settings.max_running_jobs)),
            daily_audio_minutes=float(pick(own.daily_minutes, settings.daily_audio_minutes)),
        )


def _too_many(message: str, retry_after_s: float) -> ApiError:
    return ApiError(
        429, "rate_limited", message, {"Retry-After": str(max(1, math.ceil(retry_after_s)))}
    )


def check_rate(limiter: RateLimiter, bucket: str, identity: str, per_minute: int) -> None:
    if per_minute <= 0:
        return
    wait = limiter.hit(bucket, identity, per_minute)
    if wait is not None:
        what = "job submissions" if bucket == SUBMIT else "requests"
        raise _too_many(
            f"rate limit: at most {per_minute} {what} per minute; try again in {wait:.0f} s",
            wait,
        )


def seconds_to_midnight(now: datetime) -> float:
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()


def check_running(store: JobStore, owner: str | None, limits: Limits) -> None:
    if limits.max_running <= 0:
        return
    active = store.active_count(owner)
    if active >= limits.max_running:
        raise _too_many(
            f"running jobs limit: {active} of at most {limits.max_running} jobs are queued or "
            "running; submit more when one has finished",
            RUNNING_RETRY_S,
        )


def check_audio(
    store: JobStore, owner: str | None, limits: Limits, now: datetime, adding_s: float = 0.0
) -> None:
    """Refuse when today's minutes are used up, or would be with ``adding_s`` more."""
    if limits.daily_audio_minutes <= 0:
        return
    used = store.audio_seconds(owner, now.date())
    budget = limits.daily_audio_minutes * 60
    if used >= budget or (adding_s and used + adding_s > budget):
        left = max(0.0, budget - used) / 60
        this = (
            f"this audio is {adding_s / 60:.1f} minutes and {left:.1f} are left; "
            if adding_s
            else ""
        )
        raise _too_many(
            f"daily audio limit: {used / 60:.1f} of {limits.daily_audio_minutes:g} minutes "
            f"used today (UTC); {this}the quota resets at midnight UTC",
            seconds_to_midnight(now),
        )
