"""botocore's errors in stemify's words: which ones mean a missing object, and one line of
code and message for the rest, with credential values scrubbed out."""

from __future__ import annotations

import os

from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError

# Botocore error codes of a missing object (HEAD answers with the bare status).
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def http_status(exc: ClientError) -> int | None:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


def is_missing(exc: BaseException) -> bool:
    """A missing object (not a missing bucket: that is a configuration error)."""
    return isinstance(exc, ClientError) and error_code(exc) in _MISSING


def describe(exc: BaseException) -> str:
    """One line about a botocore error, with its S3 code: never a credential."""
    if isinstance(exc, S3UploadFailedError):  # boto3's wrapper of the ClientError
        inner = exc.__cause__ or exc.__context__
        if isinstance(inner, ClientError):
            exc = inner
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or http_status(exc) or "error")
        message = str(error.get("Message") or "").strip()
        text = code if not message or message == code else f"{code} ({message})"
    else:
        text = str(exc).strip() or type(exc).__name__
    return scrub(" ".join(text.split()))


def scrub(text: str) -> str:
    # botocore's messages name settings, not their values; this makes sure of it.
    for variable in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"):
        value = os.environ.get(variable)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text
