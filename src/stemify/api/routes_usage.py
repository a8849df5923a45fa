"""``/usage``: the caller's limits and how much of them is used."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from stemify.api.auth import CallerDep, ServicesDep
from stemify.api.quotas import READ, SUBMIT, Limits, seconds_to_midnight
from stemify.api.rate_limits import RateLimiter
from stemify.api.schemas import UsageOut
from stemify.api.threads import in_thread
from stemify.jobs.store import now_utc
from stemify.services import Services

router = APIRouter(tags=["system"])


def _usage(
    services: Services, limiter: RateLimiter, identity: str, owner: str | None, limits: Limits
) -> dict[str, Any]:
    now = now_utc()

    def rate(bucket: str, per_minute: int) -> dict[str, Any]:
        if per_minute <= 0:
            return {"limit": None, "remaining": None, "reset_in_s": None}
        window = limiter.window(bucket, identity, per_minute)
        return {
            "limit": per_minute,
            "remaining": window.remaining,
            "reset_in_s": round(window.reset_in_s, 1),
        }

    audio_s = services.store.audio_seconds(owner, now.date())
    return {
        "key_id": owner,
        "submissions_per_minute": rate(SUBMIT, limits.submit_per_minute),
        "reads_per_minute": rate(READ, limits.reads_per_minute),
        "running_jobs": {
            "limit": limits.max_running or None,
            "used": services.store.active_count(owner),
        },
        "audio_minutes_today": {
            "limit": limits.daily_audio_minutes or None,
            "used": round(audio_s / 60, 2),
            "reset_in_s": round(seconds_to_midnight(now)),
        },
    }


@router.get(
    "/usage",
    summary="Your limits and usage",
    response_model=UsageOut,
    description=(
        "Requests per minute (a moving window), jobs queued or running, and minutes of audio "
        "accepted today (UTC). A limit of null means none. Reading this counts as a request."
    ),
)
async def usage(request: Request, services: ServicesDep, caller: CallerDep) -> dict[str, Any]:
    limits = caller.limits or Limits(0, 0, 0, 0.0)
    identity = caller.identity or "unlimited"
    result: dict[str, Any] = await in_thread(
        _usage, services, request.app.state.rate_limiter, identity, caller.key_id, limits
    )
    return result
