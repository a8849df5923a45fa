"""One JSON error shape for every failure: ``{"error": {"code": ..., "message": ...}}``."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from stemify.db.retry import UNAVAILABLE
from stemify.errors import (
    AudioLimitError,
    CanceledError,
    DownloadError,
    InvalidAudioError,
    InvalidOptionError,
    ModelNotFoundError,
    NotFoundError,
    StemifyError,
    StorageError,
    StorageFullError,
    UploadTooLargeError,
)

log = logging.getLogger(__name__)

# Most specific first: the first class in an error's MRO found here decides its status.
_STATUS: dict[type[StemifyError], int] = {
    InvalidAudioError: 415,
    AudioLimitError: 422,
    InvalidOptionError: 422,
    ModelNotFoundError: 422,
    DownloadError: 422,
    NotFoundError: 404,
    UploadTooLargeError: 413,
    CanceledError: 409,
    StorageFullError: 507,
    StorageError: 503,
}

# An S3 outage or a full disk is not over in a second; clients that honour Retry-After
# should not hammer it either.
STORAGE_RETRY_AFTER_S = 30

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    422: "invalid_request",
    503: "unavailable",
}


class ApiError(Exception):
    """A route-level error with its HTTP status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def status_of(exc: StemifyError) -> int:
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 500


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _stemify_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StemifyError)
    status = status_of(exc)
    if isinstance(exc, StorageFullError):
        log.error("storage full on %s %s: %s", request.method, request.url.path, exc.message)
        return error_response(
            status, exc.code, "the server has no space left to store this; try again later"
        )
    if isinstance(exc, StorageError):
        # Its message names paths and OS errors: for the log, not for the caller.
        log.error("storage error on %s %s: %s", request.method, request.url.path, exc.message)
        return error_response(
            status,
            exc.code,
            "storage unavailable: job files cannot be stored or read right now; try again later",
            {"Retry-After": str(STORAGE_RETRY_AFTER_S)},
        )
    if status >= 500:
        log.error("%s on %s %s: %s", exc.code, request.method, request.url.path, exc.message)
    return error_response(status, exc.code, exc.message)


# Seconds a client is asked to wait while the database is away: a restart takes a few.
DATABASE_RETRY_AFTER_S = 5


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # A warning: a restart makes many of these, and the reason is in /ready and the log.
    first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, first)
    return error_response(
        503,
        "database_unavailable",
        "the job database is unavailable; try again in a few seconds",
        {"Retry-After": str(DATABASE_RETRY_AFTER_S)},
    )


def _location(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(parts) or "request"


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    reasons = [
        f"{_location(tuple(error.get('loc', ())))}: {error.get('msg', 'invalid')}"
        for error in exc.errors()
    ]
    return error_response(422, "invalid_request", "; ".join(reasons) or "invalid request")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status == 404:
        message = f"no such endpoint: {request.url.path}"
    elif status == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
    return error_response(status, _HTTP_CODES.get(status, "http_error"), message, exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "an internal error occurred")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StemifyError, _stemify_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for error in UNAVAILABLE:
        app.add_exception_handler(error, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected)
