"""``/usage``: the caller's limits and how much of them is used."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from stemify.api.auth import CallerDep, ServicesDep
from stemify.api.quotas import READ, SUBMIT, per_minute, seconds_to_midnight
from stemify.api.rate_limits import RateLimiter
from stemify.api.schemas import UsageOut
from stemify.clock import now_utc
from stemify.keys.limits import Limits

router = APIRouter(tags=["system"])


@router.get(
    "/usage",
    summary="Your limits and usage",
    response_model=UsageOut,
    description=(
        "Requests per minute (a moving window), jobs queued or running, and minutes of audio "
        "accepted today (UTC). A limit of null means none. Reading this counts as a request."
    ),
)
def usage(request: Request, services: ServicesDep, caller: CallerDep) -> dict[str, Any]:
    limits = caller.limits or Limits.none()
    identity, owner = caller.identity or "unlimited", caller.key_id
    limiter: RateLimiter = request.app.state.rate_limiter
    now = now_utc()

    def rate(bucket: str) -> dict[str, Any]:
        allowed = per_minute(limits, bucket)
        if allowed <= 0:
            return {"limit": None, "remaining": None, "reset_in_s": None}
        window = limiter.window(bucket, identity, allowed)
        return {
            "limit": allowed,
            "remaining": window.remaining,
            "reset_in_s": round(window.reset_in_s, 1),
        }

    audio_s = services.usage.seconds(owner, now.date())
    return {
        "key_id": owner,
        "submissions_per_minute": rate(SUBMIT),
        "reads_per_minute": rate(READ),
        "max_running_jobs": {
            "limit": limits.max_running_jobs or None,
            "used": services.store.active_count(owner),
        },
        "daily_audio_minutes": {
            "limit": limits.daily_audio_minutes or None,
            "used": round(audio_s / 60, 2),
            "reset_in_s": round(seconds_to_midnight(now)),
        },
    }
