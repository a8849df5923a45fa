"""``/jobs``: submit, read, follow (SSE), cancel and delete jobs, and download their stems."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit

import anyio
import anyio.to_thread
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from stemify.api.auth import (
    Caller,
    CallerDep,
    ServicesDep,
    SubmitterDep,
    check_visible,
    visible_job,
)
from stemify.api.errors import ApiError
from stemify.api.job_form import (
    FORM_SCHEMA,
    WEBHOOK_FIELD,
    build_spec,
    check_fields_so_far,
    check_link,
    source_link,
)
from stemify.api.quotas import check_audio, check_running
from stemify.api.schemas import JobListOut, JobOut
from stemify.api.upload_stream import Submission, display_name, read_submission
from stemify.audio import AudioInfo, probe, probe_url
from stemify.audio.limits import MediaLimits, media_limits
from stemify.clock import now_utc
from stemify.errors import AudioLimitError, InvalidAudioError
from stemify.formatting import check_duration
from stemify.jobs.layout import input_key, job_prefix
from stemify.jobs.model import Job, JobStatus
from stemify.jobs.render import job_to_dict
from stemify.models import ModelStatus
from stemify.services import Services
from stemify.storage import Storage

router = APIRouter(tags=["jobs"])

KEEPALIVE_S = 15.0
WAIT_S = 1.0

_SUBMIT_DOC: dict[str, Any] = {
    "summary": "Submit a job",
    "description": (
        "Upload a file or give a link. Answers 202 with the new job, or 200 with the earlier "
        "job when the Idempotency-Key was already used by this caller."
    ),
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": FORM_SCHEMA},
                "application/x-www-form-urlencoded": {"schema": FORM_SCHEMA},
            },
        }
    },
    "responses": {
        200: {"description": "Idempotent replay: the job created earlier", "model": JobOut}
    },
    "response_model": JobOut,
    "status_code": 202,
}


def _job_dict(services: Services, job: Job) -> dict[str, Any]:
    return job_to_dict(job, links=services.links)  # signed stem and zip links


def _job_response(services: Services, job: Job, status: int = 200) -> JSONResponse:
    return JSONResponse(_job_dict(services, job), status_code=status)


# ---- submitting --------------------------------------------------------------------------------


def _probe_upload(path: Path, limits: MediaLimits) -> AudioInfo:
    try:
        return probe(path, limits=limits)
    except (InvalidAudioError, AudioLimitError) as exc:
        # probe names the file by its storage name ("input"); the caller knows it as theirs.
        message = exc.message
        if message.startswith(f"{path.name} "):
            message = "the uploaded file" + message[len(path.name) :]
        raise type(exc)(message) from None


def _probe_stored(storage: Storage, key: str, size: int, limits: MediaLimits) -> AudioInfo:
    """``size``: the upload's, counted as it was stored (no HEAD to ask S3 again)."""
    path = storage.local_path(key)
    if path is not None:
        info = _probe_upload(path, limits)
    else:
        # An object store: ffprobe reads the object by ranges through a short-lived link (a
        # packet count reads it all, but streamed), so the upload never lands on this disk.
        lifetime = math.ceil(2 * limits.probe_timeout_s) + 60
        url = storage.read_url(key, lifetime)
        assert url is not None, "a backend without local paths serves read URLs"
        info = probe_url(
            url,
            name="the uploaded file",
            head=b"".join(storage.read_range(key, 0, 16)),
            size=size,
            limits=limits,
        )
    check_duration(info.duration_s, limits.max_duration_s or math.inf, "the uploaded file")
    return info


def _check_source(fields: dict[str, str], has_file: bool) -> None:
    link = source_link(fields)
    if has_file and link is not None:
        raise ApiError(400, "bad_request", "send either a file or a url, not both")
    if not has_file and link is None:
        raise ApiError(400, "bad_request", "send the audio as a `file` upload or as a `url` link")


def _arriving(services: Services) -> ModelStatus | None:
    return services.auto_pull.arriving() if services.auto_pull is not None else None


def _build_job(
    services: Services, submission: Submission, job_id: str, owner: str | None, key: str | None
) -> Job:
    """The job of a fully read form (blocking: it reads the model directory, resolves hosts
    and probes the upload)."""
    settings, fields, upload = services.settings, submission.fields, submission.upload
    _check_source(fields, upload is not None)
    webhook = fields.get(WEBHOOK_FIELD, "").strip()
    job = Job(
        id=job_id,
        spec=build_spec(fields, settings.model_dir, settings.default_model, _arriving(services)),
        source="upload" if upload is not None else "url",
        created_at=now_utc(),
        owner=owner,
        webhook_url=check_link(webhook, WEBHOOK_FIELD, services.url_policy) if webhook else None,
        idempotency_key=key,
    )
    if upload is None:
        link = source_link(fields)
        assert link is not None
        job.source_url = check_link(link, "url", services.url_policy)
        job.input_name = display_name(unquote(urlsplit(job.source_url).path))
        return job
    info = _probe_stored(services.storage, upload.key, upload.size, media_limits(settings))
    job.input_name = upload.name
    job.input_key = upload.key
    job.input_sha256 = upload.sha256
    job.input_size = upload.size
    job.input_duration_s = info.duration_s
    job.input_format = info.codec
    return job


def _accept(
    services: Services, submission: Submission, job_id: str, caller: Caller, key: str | None
) -> Job:
    job = _build_job(services, submission, job_id, caller.key_id, key)
    if caller.limits is not None and job.input_duration_s is not None:
        check_audio(services.usage, caller.key_id, caller.limits, now_utc(), job.input_duration_s)
    return services.jobs.submit(job)


async def _discard(storage: Storage, job_id: str) -> None:
    with anyio.CancelScope(shield=True):
        await run_in_threadpool(storage.delete_prefix, job_prefix(job_id))


def _before_reading(services: Services, caller: Caller, key: str | None) -> Job | None:
    """Answered before a byte of the body is read: a replayed idempotency key, or a limit."""
    if key is not None:
        earlier = services.store.find_idempotent(caller.key_id, key)
        if earlier is not None:
            return earlier
    if caller.limits is not None:
        check_running(services.store, caller.key_id, caller.limits)
        check_audio(services.usage, caller.key_id, caller.limits, now_utc())
    return None


async def submit(
    request: Request,
    services: ServicesDep,
    caller: SubmitterDep,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)
    ] = None,
) -> JSONResponse:
    # Async: the body is read as a stream. Blocking steps go to the thread pool.
    earlier = await run_in_threadpool(_before_reading, services, caller, idempotency_key)
    if earlier is not None:
        return _job_response(services, earlier)
    settings, job_id = services.settings, uuid.uuid4().hex

    def check_early(fields: dict[str, str]) -> None:
        _check_source(fields, has_file=True)
        check_fields_so_far(fields, settings.model_dir, _arriving(services))
        if webhook := fields.get(WEBHOOK_FIELD, "").strip():
            check_link(webhook, WEBHOOK_FIELD, services.url_policy)

    async def on_file_start(fields: dict[str, str]) -> None:
        await run_in_threadpool(check_early, fields)

    submission = await read_submission(
        request, services.storage, input_key(job_id), settings.max_upload_mb, on_file_start,
        settings.upload_idle_timeout_s, settings.upload_min_rate_kib_s,
    )  # fmt: skip
    try:
        stored = await run_in_threadpool(
            _accept, services, submission, job_id, caller, idempotency_key
        )
    except BaseException:
        if submission.upload is not None:
            await _discard(services.storage, job_id)
        raise
    if stored.id != job_id:  # the same key raced us: theirs is the job
        await _discard(services.storage, job_id)
        return _job_response(services, stored)
    return _job_response(services, stored, 202)


router.add_api_route("/jobs", submit, methods=["POST"], name="submit_job", **_SUBMIT_DOC)
router.add_api_route(
    "/stemify", submit, methods=["POST"], name="stemify", operation_id="stemify", **_SUBMIT_DOC
)


# ---- reading -----------------------------------------------------------------------------------


@router.get("/jobs", summary="List jobs, newest first", response_model=JobListOut)
def list_jobs(
    services: ServicesDep,
    caller: CallerDep,
    status: JobStatus | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JSONResponse:
    try:
        jobs, next_cursor = services.store.list_jobs(
            owner=caller.key_id, all_owners=caller.admin, status=status, cursor=cursor, limit=limit
        )
    except ValueError:
        raise ApiError(400, "bad_request", "invalid cursor") from None
    return JSONResponse(
        {"jobs": [_job_dict(services, job) for job in jobs], "next_cursor": next_cursor}
    )


# The response models document the shape; the dicts are returned as JSONResponse, so the
# hottest route (status polling) does not validate and re-serialise every job.
@router.get("/jobs/{job_id}", summary="Get a job", response_model=JobOut)
async def get_job(job_id: str, request: Request, caller: CallerDep) -> JSONResponse:
    # The hottest route, so unlike the others async: a job polled within STEMIFY_JOB_CACHE_S is
    # answered from memory without leaving the event loop (a hop to the thread pool costs more
    # than the rest of the request); only a miss reads the store, in the pool. Services come
    # straight from the app: one dependency fewer to solve.
    services: Services = request.app.state.services
    job = services.recent.fresh(job_id)
    if job is None:
        job = await run_in_threadpool(services.recent.get, job_id)
    return _job_response(services, check_visible(caller, job_id, job))


async def _event_stream(
    request: Request, services: Services, job_id: str, limiter: anyio.CapacityLimiter
) -> AsyncIterator[str]:
    # Watched before the first read, so no change after it is missed.
    watching = services.events.watch(job_id)
    watch = await anyio.to_thread.run_sync(watching.__enter__, limiter=limiter)
    try:
        job = await run_in_threadpool(services.store.get, job_id)
        last, sent_at = "", time.monotonic()
        while job is not None:
            data = json.dumps(_job_dict(services, job), separators=(",", ":"))
            if data != last:
                last, sent_at = data, time.monotonic()
                yield f"event: job\ndata: {data}\n\n"
            elif time.monotonic() - sent_at >= KEEPALIVE_S:
                sent_at = time.monotonic()
                yield ": keep-alive\n\n"
            if job.status.finished or await request.is_disconnected():
                return
            await anyio.to_thread.run_sync(watch.wait, WAIT_S, limiter=limiter)
            job = await run_in_threadpool(services.store.get, job_id)
        yield f"event: deleted\ndata: {json.dumps({'id': job_id})}\n\n"
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(watching.__exit__, None, None, None, limiter=limiter)


@router.get(
    "/jobs/{job_id}/events",
    summary="Follow a job (Server-Sent Events)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
def job_events(
    job_id: str, request: Request, services: ServicesDep, caller: CallerDep
) -> StreamingResponse:
    visible_job(services, caller, job_id)
    return StreamingResponse(
        _event_stream(request, services, job_id, request.app.state.event_waiters),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# ---- canceling and deleting -------------------------------------------------------------------


@router.post(
    "/jobs/{job_id}/cancel", status_code=202, summary="Cancel a job", response_model=JobOut
)
def cancel_job(job_id: str, services: ServicesDep, caller: CallerDep) -> JSONResponse:
    job = visible_job(services, caller, job_id)
    if job.status.finished:
        raise ApiError(409, "conflict", f"job already {job.status.value}")
    updated = services.store.request_cancel(job_id, now_utc())
    if updated is None:
        raise ApiError(404, "not_found", f"job {job_id} not found")
    if updated.status == JobStatus.CANCELED:  # it was queued; a running job ends in its worker
        services.jobs.finished(updated)
    else:
        services.jobs.changed(job_id)
    return _job_response(services, updated, 202)


@router.delete("/jobs/{job_id}", status_code=204, summary="Delete a job and its files")
def delete_job(job_id: str, services: ServicesDep, caller: CallerDep) -> Response:
    job = visible_job(services, caller, job_id)
    if not job.status.finished:
        services.store.request_cancel(job_id, now_utc())
    services.storage.delete_prefix(job_prefix(job_id))
    services.store.delete(job_id)
    services.jobs.changed(job_id)  # event listeners then find the job gone
    return Response(status_code=204)
