"""Per-caller limits, enforced: requests per minute (submissions and reads), jobs queued or
running at once, and minutes of audio per UTC day. Over a limit: 429 with Retry-After and
which limit."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from stemify.api.errors import ApiError
from stemify.api.rate_limits import RateLimiter
from stemify.jobs.store import JobStore
from stemify.keys.limits import Limits
from stemify.keys.usage import UsageLedger

SUBMIT = "submit"
READ = "read"
# Nothing says when a running job will end; a client polling more often gains nothing.
RUNNING_RETRY_S = 30


def _too_many(message: str, retry_after_s: float) -> ApiError:
    return ApiError(
        429, "rate_limited", message, {"Retry-After": str(max(1, math.ceil(retry_after_s)))}
    )


def per_minute(limits: Limits, bucket: str) -> int:
    return limits.submissions_per_minute if bucket == SUBMIT else limits.reads_per_minute


def check_rate(limiter: RateLimiter, bucket: str, identity: str, limits: Limits) -> None:
    allowed = per_minute(limits, bucket)
    if allowed <= 0:
        return
    wait = limiter.hit(bucket, identity, allowed)
    if wait is not None:
        what = "job submissions" if bucket == SUBMIT else "requests"
        raise _too_many(
            f"rate limit: at most {allowed} {what} per minute; try again in {wait:.0f} s", wait
        )


def seconds_to_midnight(now: datetime) -> float:
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()


def check_running(store: JobStore, owner: str | None, limits: Limits) -> None:
    if limits.max_running_jobs <= 0:
        return
    active = store.active_count(owner)
    if active >= limits.max_running_jobs:
        raise _too_many(
            f"running jobs limit: {active} of at most {limits.max_running_jobs} jobs are queued "
            "or running; submit more when one has finished",
            RUNNING_RETRY_S,
        )


def check_audio(
    usage: UsageLedger, owner: str | None, limits: Limits, now: datetime, adding_s: float = 0.0
) -> None:
    """Refuse when today's minutes are used up, or would be with ``adding_s`` more."""
    if limits.daily_audio_minutes <= 0:
        return
    used = usage.seconds(owner, now.date())
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
