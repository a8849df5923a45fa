"""Request dependencies: the shared :class:`Services`, the calling API key with its limits,
and the jobs that caller may see.

The dependencies are ``async``: FastAPI runs a plain ``def`` dependency in its thread pool, and
a hop there costs more than everything else a status poll does. The one that may block (the
key lookup and a rate limit kept in Redis) hops only when it has something to look up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from stemify.api.errors import ApiError
from stemify.api.quotas import READ, SUBMIT, check_rate
from stemify.jobs.model import Job
from stemify.keys.limits import Limits
from stemify.keys.store import hash_key
from stemify.services import Services

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
_bearer = HTTPBearer(auto_error=False)
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


async def get_services(request: Request) -> Services:
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


# The two ways to send a key, as dependencies so that FastAPI documents them in the OpenAPI
# schema. Services come from the app itself in the callers below: each dependency FastAPI
# solves costs a status poll about a twentieth of its time.
ApiKeyDep = Annotated[str | None, Depends(_api_key_header)]
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _secret(api_key: str | None, bearer: HTTPAuthorizationCredentials | None) -> str | None:
    return api_key or (bearer.credentials if bearer is not None else None)


async def credentials(api_key: ApiKeyDep, bearer: BearerDep) -> str | None:
    return _secret(api_key, bearer)


CredentialsDep = Annotated[str | None, Depends(credentials)]
# With authentication off and no per-address limits: one local user who sees everything.
_LOCAL_USER = Caller(None, admin=True)


def authenticate(request: Request, services: Services, secret: str | None, bucket: str) -> Caller:
    """The caller, counted against the rate of ``bucket`` (submissions or reads). Blocks."""
    caller = _identify(request, services, secret)
    if caller.identity is not None and caller.limits is not None:
        check_rate(request.app.state.rate_limiter, bucket, caller.identity, caller.limits)
    return caller


async def _caller(request: Request, services: Services, secret: str | None, bucket: str) -> Caller:
    if not request.app.state.auth_required and not services.settings.limit_anonymous:
        return _LOCAL_USER  # nothing to look up or count
    return await run_in_threadpool(authenticate, request, services, secret, bucket)


def _identify(request: Request, services: Services, secret: str | None) -> Caller:
    settings = services.settings
    if not request.app.state.auth_required:
        # One local user sees everything; limited per address only when asked to.
        if not settings.limit_anonymous:
            return _LOCAL_USER
        address = request.client.host if request.client else "unknown"
        return Caller(None, admin=True, identity=f"addr:{address}", limits=Limits.of(settings))
    if not secret:
        raise ApiError(
            401,
            "unauthorized",
            "an API key is required: send it as X-API-Key or Authorization: Bearer",
            _CHALLENGE,
        )
    key = services.keys.by_hash(hash_key(secret))
    if key is None:
        raise ApiError(401, "unauthorized", "invalid API key", _CHALLENGE)
    return Caller(key.id, key.admin, f"key:{key.id}", Limits.of(settings, key.limits))


async def get_caller(request: Request, api_key: ApiKeyDep, bearer: BearerDep) -> Caller:
    """The caller of any route but submission; counts against the read rate."""
    return await _caller(request, request.app.state.services, _secret(api_key, bearer), READ)


async def get_submitter(request: Request, api_key: ApiKeyDep, bearer: BearerDep) -> Caller:
    """The caller of a job submission; counts against the submission rate."""
    return await _caller(request, request.app.state.services, _secret(api_key, bearer), SUBMIT)


CallerDep = Annotated[Caller, Depends(get_caller)]
SubmitterDep = Annotated[Caller, Depends(get_submitter)]


def visible_job(services: Services, caller: Caller, job_id: str) -> Job:
    """The job, or 404 when it does not exist or belongs to another key."""
    return check_visible(caller, job_id, services.store.get(job_id))


def check_visible(caller: Caller, job_id: str, job: Job | None) -> Job:
    """``job`` (read by ``job_id``), or 404 when it does not exist or belongs to another key
    (never 403: a caller must not learn that someone else's job exists)."""
    if job is None or not caller.can_see(job):
        raise ApiError(404, "not_found", f"job {job_id} not found")
    return job
