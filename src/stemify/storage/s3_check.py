"""The deploy-time check of an S3 bucket: each S3 operation stemify uses, on probe objects
under ``PREFIX/.tmp/`` (never a job's key), removed afterwards. The IAM actions each step
needs are in docs/operations/runbook.md."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from stemify.storage.base import RESERVED_SEGMENT
from stemify.storage.checks import CheckResult
from stemify.storage.s3 import S3Storage
from stemify.storage.s3_errors import describe


class _Failed(Exception):
    def __init__(self, result: CheckResult) -> None:
        super().__init__(result.detail)
        self.result = result


def s3_checks(store: S3Storage) -> Iterator[CheckResult]:
    """bucket, put, get, head, list, copy, multipart, abort, delete: the first failure ends
    the run; whatever was created is removed in any case."""
    probe = f"{store.prefix}{RESERVED_SEGMENT}/check-{uuid.uuid4().hex}"
    names = [probe, f"{probe}.copy", f"{probe}.multipart"]
    uploads: list[tuple[str, str]] = []  # multipart uploads not yet completed or aborted
    try:
        yield from _steps(store, probe, uploads)
    except _Failed as failed:
        yield failed.result
    finally:
        _clean(store, names, uploads)


def _steps(store: S3Storage, probe: str, uploads: list[tuple[str, str]]) -> Iterator[CheckResult]:
    bucket, url, client = store.bucket, store.url, store.client
    payload = b"stemify storage check " + probe.encode()
    copy, parts = f"{probe}.copy", f"{probe}.multipart"

    def call(step: str, what: str, operation: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return operation(Bucket=bucket, **kwargs)
        except (BotoCoreError, ClientError) as e:
            raise _Failed(CheckResult(step, False, f"cannot {what} {url}: {describe(e)}")) from None

    def wrong(step: str, detail: str) -> _Failed:
        return _Failed(CheckResult(step, False, f"{url}: {detail}"))

    try:
        client.head_bucket(Bucket=bucket)
    except (BotoCoreError, ClientError) as e:
        detail = f"cannot access bucket s3://{bucket}: {describe(e)}"
        raise _Failed(CheckResult("bucket", False, detail)) from None
    yield CheckResult("bucket", True, f"s3://{bucket} is reachable")

    call("put", "write to", client.put_object, Key=probe, Body=payload)
    yield CheckResult("put", True, "PutObject of a probe object")

    body = call("get", "read from", client.get_object, Key=probe)["Body"]
    try:
        data = body.read()
    except BotoCoreError as e:
        raise wrong("get", f"reading the probe failed: {describe(e)}") from None
    if data != payload:
        raise wrong("get", "GetObject returned other bytes than were written")
    yield CheckResult("get", True, "GetObject returns the probe's bytes")

    head = call("head", "read from", client.head_object, Key=probe)
    if int(head["ContentLength"]) != len(payload):
        raise wrong("head", "HeadObject gives another size than was written")
    yield CheckResult("head", True, "HeadObject gives the probe's size")

    listed = call("list", "list", client.list_objects_v2, Prefix=probe)
    if not any(item["Key"] == probe for item in listed.get("Contents", ())):
        raise wrong("list", "ListObjectsV2 does not list a written object")
    yield CheckResult("list", True, "ListObjectsV2 lists the probe")

    call(
        "copy",
        "copy within",
        client.copy_object,
        Key=copy,
        CopySource={"Bucket": bucket, "Key": probe},
    )
    if int(call("copy", "read from", client.head_object, Key=copy)["ContentLength"]) != len(
        payload
    ):
        raise wrong("copy", "the server-side copy has another size than its source")
    yield CheckResult("copy", True, "CopyObject (the server-side copy dedup uses)")

    what = "upload in parts to"
    upload_id = call("multipart", what, client.create_multipart_upload, Key=parts)["UploadId"]
    uploads.append((parts, upload_id))
    part = call("multipart", what, client.upload_part, Key=parts, UploadId=upload_id,
                PartNumber=1, Body=payload)  # fmt: skip
    listed_parts = call("multipart", what, client.list_parts, Key=parts, UploadId=upload_id)
    if len(listed_parts.get("Parts", ())) != 1:
        raise wrong("multipart", "ListParts does not list an uploaded part")
    call("multipart", what, client.complete_multipart_upload, Key=parts, UploadId=upload_id,
         MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})  # fmt: skip
    uploads.remove((parts, upload_id))
    yield CheckResult("multipart", True, "CreateMultipartUpload, UploadPart, ListParts, Complete")

    what = "abort a multipart upload in"
    upload_id = call("abort", what, client.create_multipart_upload, Key=parts)["UploadId"]
    uploads.append((parts, upload_id))
    pending = call(
        "abort", "list multipart uploads in", client.list_multipart_uploads, Prefix=probe
    )
    if not any(u["UploadId"] == upload_id for u in pending.get("Uploads", ())):
        raise wrong("abort", "ListMultipartUploads does not list a started upload")
    call("abort", what, client.abort_multipart_upload, Key=parts, UploadId=upload_id)
    uploads.remove((parts, upload_id))
    yield CheckResult("abort", True, "ListMultipartUploads, AbortMultipartUpload")

    for name in (probe, copy, parts):
        call("delete", "delete from", client.delete_object, Key=name)
    yield CheckResult("delete", True, "DeleteObject of the probe objects")


def _clean(store: S3Storage, names: list[str], uploads: list[tuple[str, str]]) -> None:
    """Best effort: what a failed step left (the failure itself is what gets reported)."""
    for key, upload_id in uploads:
        with suppress(BotoCoreError, ClientError):
            store.client.abort_multipart_upload(Bucket=store.bucket, Key=key, UploadId=upload_id)
    for name in names:
        with suppress(BotoCoreError, ClientError):
            store.client.delete_object(Bucket=store.bucket, Key=name)
