"""Request dependencies: the shared :class:`Services`, the calling API key, and the jobs that
caller may see."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import anyio.to_thread
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from stemify.api.errors import ApiError
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

    def can_see(self, job: Job) -> bool:
        return self.admin or job.owner == self.key_id


async def get_caller(
    request: Request,
    services: ServicesDep,
    api_key: Annotated[str | None, Depends(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    if not request.app.state.auth_required:
        return Caller(None, admin=True)  # one local user sees everything
    secret = api_key or (bearer.credentials if bearer is not None else None)
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
    return Caller(key.id, admin=key.admin)


CallerDep = Annotated[Caller, Depends(get_caller)]


async def visible_job(services: Services, caller: Caller, job_id: str) -> Job:
    """The job, or 404 when it does not exist or belongs to another key (never 403: a caller
    must not learn that someone else's job exists)."""
    job = await anyio.to_thread.run_sync(services.store.get, job_id)
    if job is None or not caller.can_see(job):
        raise ApiError(404, "not_found", f"job {job_id} not found")
    return job
