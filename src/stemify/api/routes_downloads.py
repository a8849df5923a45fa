"""Stem downloads: one stem with HTTP Range, or all of them as a streamed zip."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from stemify.api.auth import CredentialsDep, ServicesDep, authenticate, visible_job
from stemify.api.errors import ApiError
from stemify.api.quotas import READ
from stemify.clock import now_utc
from stemify.jobs.links import attachment, base_name, extension, stem_file_name
from stemify.jobs.model import Job, JobStatus
from stemify.jobs.signing import target_of
from stemify.services import Services
from stemify.storage import Storage

router = APIRouter(tags=["downloads"])

# ---- access: a signed link, or an API key as for every other route ----------------------------

# A string, so that a tampered expiry is a 403 like any other tampering, not a 422.
ExpiresQuery = Annotated[
    str | None, Query(description="Signed link: expiry (Unix seconds), as given in the job")
]
SigQuery = Annotated[str | None, Query(description="Signed link: signature, as given in the job")]
_SIGNED_DOC = (
    "Works without an API key through the signed, expiring `url` / `zip_url` of the job; "
    "a tampered or expired link is refused with 403."
)


def _downloadable(
    request: Request,
    services: Services,
    secret: str | None,
    job_id: str,
    stem: str | None,
    expires: str | None,
    sig: str | None,
) -> Job:
    if expires is None and sig is None:
        caller = authenticate(request, services, secret, READ)
        return visible_job(services, caller, job_id)
    if expires is None or sig is None:
        raise ApiError(403, "forbidden", "a signed link needs both `expires` and `sig`")
    if not (expires.isascii() and expires.isdigit() and len(expires) <= 12):
        raise ApiError(403, "forbidden", "the link's expiry is not valid")
    refusal = services.links.signer.verify(job_id, target_of(stem), int(expires), sig, now_utc())
    if refusal:
        raise ApiError(403, "forbidden", refusal)
    job = services.store.get(job_id)
    if job is None:
        raise ApiError(404, "not_found", f"job {job_id} not found")
    return job


# ---- downloading -------------------------------------------------------------------------------

_MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg"}
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_CHUNK = 1 << 18


def _succeeded(job: Job) -> Job:
    if job.status is not JobStatus.SUCCEEDED:
        raise ApiError(
            409,
            "conflict",
            f"job is {job.status.value}; its stems can be downloaded once it has succeeded",
        )
    return job


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``[start, end)`` of a single ``Range: bytes=`` request; None to send the whole file
    (no header, several ranges or a malformed one, which HTTP lets a server ignore)."""
    match = _RANGE.fullmatch(header.strip()) if header else None
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    unsatisfiable = ApiError(
        416,
        "range_not_satisfiable",
        f"the range {header} is outside the file ({size} bytes)",
        {"Content-Range": f"bytes */{size}"},
    )
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise unsatisfiable
        return max(size - suffix, 0), size
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise unsatisfiable
    return start, min(int(last) + 1, size) if last else size


@router.get(
    "/jobs/{job_id}/stems/{stem}",
    summary="Download one stem (supports Range)",
    description=_SIGNED_DOC
    + " With S3 storage the answer is a 307 redirect to the object's presigned (or CDN) "
    "link, where Range works too, unless STEMIFY_DOWNLOAD_MODE=proxy passes the bytes "
    "through.",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"audio/wav": {}, "audio/flac": {}, "audio/mpeg": {}}},
        206: {"description": "The requested range"},
        307: {"description": "S3 storage: the stem's direct link, in `Location`"},
    },
)
def download_stem(
    job_id: str,
    stem: str,
    request: Request,
    services: ServicesDep,
    secret: CredentialsDep,
    expires: ExpiresQuery = None,
    sig: SigQuery = None,
) -> Response:
    job = _succeeded(_downloadable(request, services, secret, job_id, stem, expires, sig))
    found = job.stems.get(stem)
    if found is None:
        names = ", ".join(job.stems) or "none"
        raise ApiError(404, "not_found", f"job {job_id} has no stem {stem!r} (it has {names})")
    size = services.storage.size(found.key)  # a missing object: 404 here, in our shape
    direct = services.links.direct_url(job, found, now_utc())
    if direct is not None and services.settings.download_mode == "redirect":
        # The same link as the job's (Range and all go to the object store); never cached,
        # as it is a bearer token of its own.
        return RedirectResponse(direct, status_code=307, headers={"Cache-Control": "no-store"})
    media_type = _MEDIA_TYPES.get(extension(found.key, job), "application/octet-stream")
    headers = {"Content-Disposition": attachment(stem_file_name(job, found))}
    span = byte_range(request.headers.get("range"), size)  # a 416 is refused here
    path = services.storage.local_path(found.key)
    if path is not None:
        return _StoredFile(path, whole=span is None, headers=headers, media_type=media_type)
    # Storage without files: the range streamed from the backend.
    start, end = span if span is not None else (0, size)
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    headers |= {"Accept-Ranges": "bytes", "Content-Length": str(end - start)}
    chunks = services.storage.read_range(found.key, start, end, _CHUNK)
    return StreamingResponse(
        chunks, status_code=206 if span is not None else 200, headers=headers, media_type=media_type
    )


class _StoredFile(FileResponse):
    """Starlette serves a stored file (sendfile, Range, If-Range, HEAD). A Range header that
    :func:`byte_range` reads as "the whole file" (several ranges, a malformed one) is dropped
    first: Starlette would answer those with a multipart body or a plain-text 400, where HTTP
    lets a server send the whole file."""

    def __init__(self, path: Path, *, whole: bool, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.whole = whole

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.whole:
            headers = [(name, value) for name, value in scope["headers"] if name != b"range"]
            scope = {**scope, "headers": headers}
        await super().__call__(scope, receive, send)


class _Chunks:
    """A write-only file for zipfile that hands out what was written since the last take."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def _zip_time(moment: datetime) -> tuple[int, int, int, int, int, int]:
    return (moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second)


def _zip_stream(
    storage: Storage, entries: list[tuple[str, str, int]], stamp: datetime
) -> Iterator[bytes]:
    """A stored (uncompressed) zip of ``(name, key, size)`` entries, produced as it is read:
    never whole in memory or on disk. The output is not seekable, so every entry ends with a
    data descriptor; known sizes let zipfile pick zip64 for entries over 2 GiB."""
    out = _Chunks()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, key, size in entries:
            info = zipfile.ZipInfo(name, date_time=_zip_time(stamp))
            info.compress_type = zipfile.ZIP_STORED
            info.file_size = size
            info.external_attr = 0o644 << 16
            with archive.open(info, "w") as entry:
                for chunk in storage.read_range(key, 0, None, _CHUNK):
                    entry.write(chunk)
                    yield out.take()
            yield out.take()
    yield out.take()


@router.get(
    "/jobs/{job_id}/stems.zip",
    summary="Download every stem as one zip",
    description=_SIGNED_DOC,
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}}}},
)
def download_zip(
    job_id: str,
    request: Request,
    services: ServicesDep,
    secret: CredentialsDep,
    expires: ExpiresQuery = None,
    sig: SigQuery = None,
) -> StreamingResponse:
    job = _succeeded(_downloadable(request, services, secret, job_id, None, expires, sig))
    entries = []
    for stem in job.stems.values():
        size = services.storage.size(stem.key)  # missing → 404 now
        entries.append((f"{stem.name}.{extension(stem.key, job)}", stem.key, size))
    stamp = job.finished_at or job.created_at
    return StreamingResponse(
        (chunk for chunk in _zip_stream(services.storage, entries, stamp) if chunk),
        media_type="application/zip",
        headers={"Content-Disposition": attachment(f"{base_name(job)}-stems.zip")},
    )
