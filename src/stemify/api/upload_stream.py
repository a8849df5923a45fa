"""The submission form, read as a stream.

Text fields are kept in memory (small, capped); the file part goes straight into storage while
it is counted and hashed, so an upload over the limit is refused after ``limit`` bytes, not
after it has been spooled whole. Which fields exist, and what they mean: :mod:`.job_form`."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import parse_qsl

import anyio
import anyio.to_thread
from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from stemify.api.errors import ApiError
from stemify.api.job_form import FILE_FIELD, TEXT_FIELDS
from stemify.errors import UploadTooLargeError, storage_error
from stemify.storage import Storage

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

MAX_FIELD_BYTES = 8192
# Room for boundaries, part headers and text fields on top of the file itself.
FORM_OVERHEAD = 256 << 10
_FLUSH_BYTES = 1 << 20
MAX_NAME_CHARS = 200


@dataclass(frozen=True)
class Upload:
    key: str
    name: str | None  # sanitised, display only
    size: int
    sha256: str


@dataclass
class Submission:
    fields: dict[str, str] = field(default_factory=dict)
    upload: Upload | None = None


FileStartHook = Callable[[dict[str, str]], Awaitable[None]]


def display_name(raw: str) -> str | None:
    """The base name of a client's file name, without control or format characters (bidi
    overrides included) and path separators, at most 200 characters. Never a path."""
    base = re.split(r"[/\\]", raw)[-1]
    cleaned = "".join(c for c in base if unicodedata.category(c)[0] != "C").strip()
    cleaned = cleaned[:MAX_NAME_CHARS]
    return cleaned if cleaned not in ("", ".", "..") else None


def too_large(limit_mb: int) -> UploadTooLargeError:
    return UploadTooLargeError(f"upload is larger than the {limit_mb} MB limit")


class _Aborted(Exception):
    pass


class _UploadSink:
    """Bytes of the file part: counted as they arrive (in the event loop), written and hashed
    in batches (in a worker thread), and stored atomically by ``commit``."""

    def __init__(self, storage: Storage, key: str, limit_mb: int) -> None:
        self.storage = storage
        self.key = key
        self.limit_mb = limit_mb
        self.limit = limit_mb << 20
        self.size = 0
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self._hash = hashlib.sha256()
        self._writer: AbstractContextManager[BinaryIO] | None = None
        self._file: BinaryIO | None = None

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise too_large(self.limit_mb)
        self.pending.append(data)
        self.pending_bytes += len(data)

    def flush(self) -> None:
        if self._file is None:
            self._writer = self.storage.writer(self.key)
            self._file = self._writer.__enter__()
        try:
            for data in self.pending:
                self._file.write(data)
                self._hash.update(data)
        except OSError as exc:  # a full disk: the storage's error, not an internal one
            raise storage_error(f"cannot write {self.key}", exc) from exc
        self.pending.clear()
        self.pending_bytes = 0

    def commit(self) -> str:
        self.flush()
        writer, self._writer, self._file = self._writer, None, None
        assert writer is not None
        writer.__exit__(None, None, None)
        return self._hash.hexdigest()

    def abort(self) -> None:
        writer, self._writer, self._file = self._writer, None, None
        if writer is not None:
            with suppress(_Aborted):
                writer.__exit__(_Aborted, _Aborted(), None)


class _MultipartForm:
    """python-multipart callbacks: collect text fields, route the file part to the sink."""

    def __init__(self, sink: _UploadSink) -> None:
        self.sink = sink
        self.fields: dict[str, str] = {}
        self.file_name: str | None = None
        self.file_started = False
        self.ended = False
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._part: str | None = None
        self._buffer = bytearray()

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._disposition = b""
        self._part = None
        self._buffer = bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if not name:
            raise ApiError(400, "bad_request", "a form part has no name")
        if name == FILE_FIELD:
            if self.file_started:
                raise ApiError(400, "bad_request", "send one file per job")
            self.file_started = True
            raw_name = options.get(b"filename")
            self.file_name = display_name(raw_name.decode("utf-8", "replace")) if raw_name else None
        elif name in TEXT_FIELDS:
            if name in self.fields:
                raise ApiError(400, "bad_request", f"form field {name!r} is given twice")
        else:
            allowed = ", ".join(sorted({FILE_FIELD, *TEXT_FIELDS}))
            raise ApiError(
                422, "invalid_request", f"unknown form field {name!r}; the fields are {allowed}"
            )
        self._part = name

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part == FILE_FIELD:
            self.sink.add(data[start:end])
            return
        self._buffer += data[start:end]
        if len(self._buffer) > MAX_FIELD_BYTES:
            raise ApiError(
                422, "invalid_request", f"form field {self._part!r} is over {MAX_FIELD_BYTES} bytes"
            )

    def _part_end(self) -> None:
        if self._part is None or self._part == FILE_FIELD:
            return
        try:
            self.fields[self._part] = self._buffer.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(
                400, "bad_request", f"form field {self._part!r} is not UTF-8 text"
            ) from None

    def _end(self) -> None:
        self.ended = True


def _content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    return int(value) if value and value.isdigit() else None


async def _paced(request: Request, idle_s: float, min_rate: int) -> AsyncIterator[bytes]:
    """The body's chunks; a client that sends nothing for ``idle_s`` (stalled), or less than
    ``min_rate`` bytes a second over ``idle_s`` (trickling), is cut off with 408, so neither
    holds a connection and a temp file for ever. ``min_rate`` 0: no rate check."""
    chunks = request.stream().__aiter__()
    window_start, window_bytes = anyio.current_time(), 0
    while True:
        with anyio.move_on_after(idle_s) as waiting:
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
        if waiting.cancelled_caught:
            raise ApiError(
                408, "upload_timeout", f"the upload sent nothing for {idle_s:g} s and was stopped"
            )
        window_bytes += len(chunk)
        elapsed = anyio.current_time() - window_start
        if elapsed >= idle_s:
            if window_bytes < min_rate * elapsed:
                raise ApiError(
                    408,
                    "upload_timeout",
                    f"the upload sent {window_bytes} bytes in {elapsed:.0f} s, slower than the "
                    f"{min_rate >> 10} KiB/s required, and was stopped",
                )
            window_start, window_bytes = anyio.current_time(), 0
        yield chunk


async def _read_small(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "too_large", f"a form without a file is limited to {limit} bytes")
    return bytes(body)


async def read_submission(
    request: Request,
    storage: Storage,
    input_key: str,
    limit_mb: int,
    on_file_start: FileStartHook,
    idle_timeout_s: float = 60.0,
    min_rate_kib_s: int = 0,
) -> Submission:
    """Read the submission form. The file part is stored under ``input_key``; if anything
    fails, nothing is left in storage. ``on_file_start`` sees the fields sent before the file,
    so a bad option is refused before a long upload."""
    body_limit = (limit_mb << 20) + FORM_OVERHEAD
    length = _content_length(request)
    if length is not None and length > body_limit:
        raise too_large(limit_mb)
    content_type, params = parse_options_header(request.headers.get("content-type"))
    chunks = _paced(request, idle_timeout_s, min_rate_kib_s << 10)
    try:
        if content_type == b"application/x-www-form-urlencoded":
            body = await _read_small(chunks, FORM_OVERHEAD)
            try:
                pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=32)
            except (UnicodeDecodeError, ValueError):
                raise ApiError(400, "bad_request", "the form is not valid UTF-8") from None
            fields = dict(pairs)
            if FILE_FIELD in fields:
                raise ApiError(400, "bad_request", "a file must be sent as multipart/form-data")
            unknown = sorted(set(fields) - TEXT_FIELDS)
            if unknown:
                raise ApiError(422, "invalid_request", f"unknown form field {unknown[0]!r}")
            return Submission(fields=fields)
        if content_type != b"multipart/form-data":
            if not content_type and not await _read_small(chunks, FORM_OVERHEAD):
                return Submission()  # no body at all: "neither file nor url", said by the caller
            raise ApiError(
                400, "bad_request", "send the job as a multipart/form-data form (file or url)"
            )
        boundary = params.get(b"boundary")
        if not boundary:
            raise ApiError(400, "bad_request", "the multipart form has no boundary")
        return await _read_multipart(
            chunks, storage, input_key, limit_mb, body_limit, boundary, on_file_start
        )
    except ClientDisconnect:
        raise ApiError(400, "bad_request", "the upload was interrupted") from None


async def _read_multipart(
    chunks: AsyncIterator[bytes],
    storage: Storage,
    input_key: str,
    limit_mb: int,
    body_limit: int,
    boundary: bytes,
    on_file_start: FileStartHook,
) -> Submission:
    sink = _UploadSink(storage, input_key, limit_mb)
    form = _MultipartForm(sink)
    parser = MultipartParser(boundary, form.callbacks())
    received = 0
    checked = False
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > body_limit:
                raise too_large(limit_mb)
            parser.write(chunk)
            if form.file_started and not checked:
                checked = True
                await on_file_start(dict(form.fields))
            if sink.pending_bytes >= _FLUSH_BYTES:
                await anyio.to_thread.run_sync(sink.flush)
        parser.finalize()
        if not form.ended:
            raise ApiError(400, "bad_request", "the multipart form ended before its last boundary")
        if not form.file_started:
            return Submission(fields=form.fields)
        sha256 = await anyio.to_thread.run_sync(sink.commit)
    except MultipartParseError as exc:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(sink.abort)
        raise ApiError(400, "bad_request", f"malformed multipart form: {exc}") from None
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(sink.abort)
        raise
    upload = Upload(key=input_key, name=form.file_name, size=sink.size, sha256=sha256)
    return Submission(fields=form.fields, upload=upload)
