"""The one error shape, declared in the OpenAPI schema for every status the API answers
with, so clients (and schemathesis) see what a failure looks like."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


_STATUSES = {
    400: "The request is malformed (e.g. neither a file nor a url)",
    401: "An API key is missing or invalid",
    403: "A signed link is tampered with or expired",
    404: "No such job, stem or endpoint",
    409: "The job is not in a state that allows this",
    413: "The body or the upload is over its limit",
    415: "The upload is not audio that can be decoded",
    416: "The range is outside the file",
    422: "A field is invalid",
    429: "Over a rate limit or quota (see Retry-After)",
    503: "Storage or a dependency is unavailable",
}


def error_responses() -> dict[int | str, dict[str, Any]]:
    responses: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorBody, "description": text} for status, text in _STATUSES.items()
    }
    responses[429]["headers"] = {
        "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
    }
    return responses
