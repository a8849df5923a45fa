"""``/jobs``: submit, read, follow (SSE), cancel and delete jobs, and download their stems."""

from __future__ import annotations

import json
import math
import tempfile
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

from stemify.api.auth import CallerDep, ServicesDep, SubmitterDep, visible_job
from stemify.api.errors import ApiError
from stemify.api.quotas import check_audio, check_running
from stemify.api.schemas import JobListOut, JobOut
from stemify.api.threads import in_thread
from stemify.api.uploads import (
    FILE_FIELD,
    Submission,
    build_spec,
    check_link,
    display_name,
    read_submission,
)
from stemify.audio import AudioInfo, probe
from stemify.audio.limits import MediaLimits, media_limits
from stemify.errors import AudioLimitError, InvalidAudioError
from stemify.formatting import check_duration
from stemify.jobs.model import Job, JobStatus
from stemify.jobs.render import job_to_dict
from stemify.jobs.store import now_utc
from stemify.jobs.urlguard import url_policy
from stemify.services import Services, publish_job, submit_job
from stemify.storage import Storage, local_file

router = APIRouter(tags=["jobs"])

KEEPALIVE_S = 15.0
WAIT_S = 1.0

_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        FILE_FIELD: {
            "type": "string",
            "format": "binary",
            "description": "The audio (or video) file. Send either file or url.",
        },
        "url": {"type": "string", "description": "An http(s) link the worker downloads."},
        "model": {"type": "string", "description": "Default: the server's default model."},
        "stems": {"type": "string", "description": "Comma-separated subset, e.g. vocals,drums."},
        "two_stems": {"type": "string", "description": "e.g. vocals: vocals + no_vocals."},
        "output_format": {"type": "string", "enum": ["wav", "flac", "mp3"], "default": "wav"},
        "bit_depth": {"type": "integer", "enum": [16, 24, 32], "default": 16},
        "mp3_bitrate": {"type": "integer", "default": 320},
        "shifts": {"type": "integer", "minimum": 0, "maximum": 10, "default": 1},
        "overlap": {"type": "number", "minimum": 0, "maximum": 0.99, "default": 0.25},
        "webhook_url": {"type": "string", "description": "Called (signed) when the job ends."},
    },
}
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
                "multipart/form-data": {"schema": _FORM_SCHEMA},
                "application/x-www-form-urlencoded": {"schema": _FORM_SCHEMA},
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
    return job_to_dict(job, links=services.link_signer())  # signed stem and zip links


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


def _probe_stored(storage: Storage, key: str, limits: MediaLimits) -> AudioInfo:
    with tempfile.TemporaryDirectory(prefix="stemify-probe-") as scratch:
        info = _probe_upload(local_file(storage, key, Path(scratch)), limits)
    check_duration(info.duration_s, limits.max_duration_s or math.inf, "the uploaded file")
    return info


def _check_source(fields: dict[str, str], has_file: bool) -> None:
    if has_file and "url" in fields:
        raise ApiError(400, "bad_request", "send either a file or a url, not both")
    if not has_file and "url" not in fields:
        raise ApiError(400, "bad_request", "send the audio as a `file` upload or as a `url` link")


async def _build_job(
    services: Services,
    submission: Submission,
    job_id: str,
    owner: str | None,
    idempotency_key: str | None,
) -> Job:
    settings, fields, upload = services.settings, submission.fields, submission.upload
    _check_source(fields, upload is not None)
    spec = await in_thread(build_spec, fields, settings.model_dir, settings.default_model)
    webhook = fields.get("webhook_url", "").strip()
    job = Job(
        id=job_id,
        spec=spec,
        source="upload" if upload is not None else "url",
        created_at=now_utc(),
        owner=owner,
        webhook_url=(
            await in_thread(check_link, webhook, "webhook_url", url_policy(settings))
            if webhook
            else None
        ),
        idempotency_key=idempotency_key,
    )
    if upload is None:
        # Resolves the host: in a thread.
        job.source_url = await in_thread(check_link, fields["url"], "url", url_policy(settings))
        job.input_name = display_name(unquote(urlsplit(job.source_url).path))
        return job
    info: AudioInfo = await in_thread(
        _probe_stored, services.storage, upload.key, media_limits(settings)
    )
    job.input_name = upload.name
    job.input_key = upload.key
    job.input_sha256 = upload.sha256
    job.input_size = upload.size
    job.input_duration_s = info.duration_s
    job.input_format = info.codec
    return job


async def _discard(storage: Storage, job_id: str) -> None:
    with anyio.CancelScope(shield=True):
        await in_thread(storage.delete_prefix, f"jobs/{job_id}/")


async def submit(
    request: Request,
    services: ServicesDep,
    caller: SubmitterDep,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)
    ] = None,
) -> JSONResponse:
    store, settings = services.store, services.settings
    if idempotency_key is not None:
        earlier = await in_thread(store.find_idempotent, caller.key_id, idempotency_key)
        if earlier is not None:  # answered without reading (or storing) the body again
            return _job_response(services, earlier)
    if caller.limits is not None:  # refused before a byte of the upload is read
        await in_thread(check_running, store, caller.key_id, caller.limits)
        await in_thread(check_audio, store, caller.key_id, caller.limits, now_utc())
    job_id = uuid.uuid4().hex

    async def check_early(fields: dict[str, str]) -> None:
        _check_source(fields, has_file=True)
        await in_thread(build_spec, fields, settings.model_dir, settings.default_model)
        if webhook := fields.get("webhook_url", "").strip():
            await in_thread(check_link, webhook, "webhook_url", url_policy(settings))

    submission = await read_submission(
        request, services.storage, f"jobs/{job_id}/input", settings.max_upload_mb, check_early
    )
    try:
        job = await _build_job(services, submission, job_id, caller.key_id, idempotency_key)
        if caller.limits is not None and job.input_duration_s is not None:
            await in_thread(
                check_audio, store, caller.key_id, caller.limits, now_utc(), job.input_duration_s
            )
        stored: Job = await in_thread(submit_job, services, job)
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
async def list_jobs(
    services: ServicesDep,
    caller: CallerDep,
    status: JobStatus | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JSONResponse:
    try:
        jobs, next_cursor = await in_thread(
            services.store.list_jobs,
            owner=caller.key_id,
            all_owners=caller.admin,
            status=status,
            cursor=cursor,
            limit=limit,
        )
    except ValueError:
        raise ApiError(400, "bad_request", "invalid cursor") from None
    return JSONResponse(
        {"jobs": [_job_dict(services, job) for job in jobs], "next_cursor": next_cursor}
    )


# The response models document the shape; the dicts are returned as JSONResponse, so the
# hottest route (status polling) does not validate and re-serialise every job.
@router.get("/jobs/{job_id}", summary="Get a job", response_model=JobOut)
async def get_job(job_id: str, services: ServicesDep, caller: CallerDep) -> JSONResponse:
    return _job_response(services, await visible_job(services, caller, job_id))


def _wait_for_event(subscription: Any, timeout: float) -> None:
    """Block until an event arrives (or ``timeout``), then drop any backlog: one store read
    catches up with all of them."""
    if subscription.get(timeout) is None:
        return
    for _ in range(1000):
        if subscription.get(0) is None:
            return


def _sse(services: Services, job: Job) -> tuple[str, str]:
    data = json.dumps(_job_dict(services, job), separators=(",", ":"))
    return data, f"event: job\ndata: {data}\n\n"


async def _event_stream(
    request: Request, services: Services, job_id: str, limiter: anyio.CapacityLimiter
) -> AsyncIterator[str]:
    # Subscribed before the first read, so nothing that happens after it is missed.
    subscribing = services.events.subscribe(job_id)
    subscription = await anyio.to_thread.run_sync(subscribing.__enter__, limiter=limiter)
    try:
        job: Job | None = await in_thread(services.store.get, job_id)
        last, sent_at = "", time.monotonic()
        while job is not None:
            data, event = _sse(services, job)
            if data != last:
                last, sent_at = data, time.monotonic()
                yield event
            elif time.monotonic() - sent_at >= KEEPALIVE_S:
                sent_at = time.monotonic()
                yield ": keep-alive\n\n"
            if job.status.finished or await request.is_disconnected():
                return
            await anyio.to_thread.run_sync(_wait_for_event, subscription, WAIT_S, limiter=limiter)
            job = await in_thread(services.store.get, job_id)
        yield f"event: deleted\ndata: {json.dumps({'id': job_id})}\n\n"
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(subscribing.__exit__, None, None, None, limiter=limiter)


@router.get(
    "/jobs/{job_id}/events",
    summary="Follow a job (Server-Sent Events)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def job_events(
    job_id: str, request: Request, services: ServicesDep, caller: CallerDep
) -> StreamingResponse:
    await visible_job(services, caller, job_id)
    return StreamingResponse(
        _event_stream(request, services, job_id, request.app.state.event_waiters),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# ---- canceling and deleting -------------------------------------------------------------------


@router.post(
    "/jobs/{job_id}/cancel", status_code=202, summary="Cancel a job", response_model=JobOut
)
async def cancel_job(job_id: str, services: ServicesDep, caller: CallerDep) -> JSONResponse:
    job = await visible_job(services, caller, job_id)
    if job.status.finished:
        raise ApiError(409, "conflict", f"job already {job.status.value}")
    updated: Job | None = await in_thread(services.store.request_cancel, job_id, now_utc())
    if updated is None:
        raise ApiError(404, "not_found", f"job {job_id} not found")
    if updated.status == JobStatus.CANCELED:  # it was queued; a running job ends in its worker
        services.metrics.job_finished(updated.spec.model, "canceled", updated.error_code)
    await in_thread(publish_job, services, updated)
    return _job_response(services, updated, 202)


@router.delete("/jobs/{job_id}", status_code=204, summary="Delete a job and its files")
async def delete_job(job_id: str, services: ServicesDep, caller: CallerDep) -> Response:
    job = await visible_job(services, caller, job_id)
    if not job.status.finished:
        await in_thread(services.store.request_cancel, job_id, now_utc())
    await in_thread(services.storage.delete_prefix, f"jobs/{job_id}/")
    await in_thread(services.store.delete, job_id)
    # Wakes up event listeners, who then find the job gone.
    await in_thread(services.events.publish, job_id, {"id": job_id, "status": "deleted"})
    return Response(status_code=204)
