"""Request dependencies: the shared :class:`Services`, the calling API key with its limits,
and the jobs that caller may see."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import anyio.to_thread
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from stemify.api.errors import ApiError
from stemify.api.quotas import READ, SUBMIT, Limits, check_rate
from stemify.api.rate_limits import RateLimiter
from stemify.api.threads import in_thread
from stemify.jobs.model import Job
from stemify.jobs.store import hash_key
from stemify.services import Services

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
_bearer = HTTPBearer(auto_error=False)
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


@dataclass(frozen=True)
class Caller:
    key_id: str | None  # None when authentication is off
    admin: bool
    # Who rate limits count against ("key:<id>" or "addr:<ip>"); None: not limited.
    identity: str | None = None
    limits: Limits | None = None

    def can_see(self, job: Job) -> bool:
        return self.admin or job.owner == self.key_id


def credentials(
    api_key: Annotated[str | None, Depends(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str | None:
    return api_key or (bearer.credentials if bearer is not None else None)


CredentialsDep = Annotated[str | None, Depends(credentials)]


async def authenticate(request: Request, services: Services, secret: str | None) -> Caller:
    settings = services.settings
    if not request.app.state.auth_required:
        # One local user sees everything; limited per address only when asked to.
        if not settings.limit_anonymous:
            return Caller(None, admin=True)
        address = request.client.host if request.client else "unknown"
        return Caller(None, admin=True, identity=f"addr:{address}", limits=Limits.of(settings))
    if not secret:
        raise ApiError(
            401,
            "unauthorized",
            "an API key is required: send it as X-API-Key or Authorization: Bearer",
            _CHALLENGE,
        )
    key = await anyio.to_thread.run_sync(services.store.key_by_hash, hash_key(secret))
    if key is None:
        raise ApiError(401, "unauthorized", "invalid API key", _CHALLENGE)
    return Caller(key.id, key.admin, f"key:{key.id}", Limits.of(settings, key.limits))


async def limit_rate(request: Request, caller: Caller, bucket: str) -> None:
    if caller.identity is None or caller.limits is None:
        return
    per_minute = (
        caller.limits.submit_per_minute if bucket == SUBMIT else caller.limits.reads_per_minute
    )
    limiter: RateLimiter = request.app.state.rate_limiter
    await in_thread(check_rate, limiter, bucket, caller.identity, per_minute)


async def get_caller(request: Request, services: ServicesDep, secret: CredentialsDep) -> Caller:
    """The caller of any route but submission; counts against the read rate."""
    caller = await authenticate(request, services, secret)
    await limit_rate(request, caller, READ)
    return caller


async def get_submitter(request: Request, services: ServicesDep, secret: CredentialsDep) -> Caller:
    """The caller of a job submission; counts against the submission rate."""
    caller = await authenticate(request, services, secret)
    await limit_rate(request, caller, SUBMIT)
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]
SubmitterDep = Annotated[Caller, Depends(get_submitter)]


async def visible_job(services: Services, caller: Caller, job_id: str) -> Job:
    """The job, or 404 when it does not exist or belongs to another key (never 403: a caller
    must not learn that someone else's job exists)."""
    job = await anyio.to_thread.run_sync(services.store.get, job_id)
    if job is None or not caller.can_see(job):
        raise ApiError(404, "not_found", f"job {job_id} not found")
    return job
