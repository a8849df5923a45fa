"""Storage in an S3 bucket (AWS or any S3-compatible service), under a key prefix.

Endpoint, region and credentials come from boto3's own configuration (``AWS_ENDPOINT_URL_S3``
/ ``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, the
shared config files, instance roles), as for every other S3 tool; stemify adds only the
addressing style. Transfers go through boto3's transfer manager:

- ``writer(key)`` streams into a multipart upload: the caller writes into an ``os.pipe``; the
  transfer manager reads it as a non-seekable stream in parts of ``part_size`` bytes, with one
  part in flight and the next one filling (two parts of memory and botocore's 1 MiB hashing
  reads, whatever the size: 12.3 MiB measured for 5 MiB parts). The
  stream ends cleanly only when the ``with`` block does: otherwise the stream raises instead
  of ending, so the transfer manager aborts the multipart upload and no object appears.
- ``put_file`` is ``upload_file``, ``copy`` the managed server-side copy (CopyObject or
  UploadPartCopy: the bytes never come through this process).

Abandoned multipart uploads (a crashed writer) are what ``cleanup_temp`` aborts."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO, cast

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from stemify.errors import NotFoundError, StorageError
from stemify.storage.base import check_key, check_prefix
from stemify.storage.s3_errors import describe, error_code, http_status, is_missing
from stemify.storage.s3_streams import (
    CloseWhenDone,
    ObjectReader,
    PipeSink,
    PipeSource,
    Unsatisfiable,
    pieces,
)

ADDRESSING_STYLES: tuple[str, ...] = ("auto", "path", "virtual")

MiB = 1 << 20
# S3's smallest part (but the last) is 5 MiB; 8 MiB is boto3's own default.
DEFAULT_PART_SIZE = 8 * MiB
MIN_PART_SIZE = 5 * MiB
# An endpoint that does not accept a connection within seconds is down; a read may wait
# longer (a large CopyObject answers only when done).
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 60.0
# Copies up to 1 GiB are one CopyObject (S3 takes up to 5 GiB in one); larger ones are
# UploadPartCopy in 256 MiB parts, four at once. Either way the server copies.
_COPY_THRESHOLD = 1 << 30
_COPY_PART = 256 * MiB
# DeleteObjects takes at most 1000 keys per request.
_DELETE_BATCH = 1000
# S3 bucket names, and the looser ones some S3-compatible services accept (uppercase, "_").
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{2,254}")


class S3Storage:
    """Objects ``s3://bucket/prefix/<key>``; :meth:`check` verifies access at deploy time."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        addressing_style: str = "auto",
        part_size: int = DEFAULT_PART_SIZE,
        session: Any = None,
        client: Any = None,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    ) -> None:
        """``session``: a ``boto3.session.Session`` to make the client from (default: a new
        one, i.e. boto3's configuration as the environment and config files say);
        ``client``: a ready S3 client instead (then ``addressing_style`` is its own)."""
        if not _BUCKET.fullmatch(bucket):
            raise ValueError(f"invalid S3 bucket name {bucket!r}")
        if addressing_style not in ADDRESSING_STYLES:
            raise ValueError(
                f"S3 addressing style must be one of {', '.join(ADDRESSING_STYLES)}, "
                f"got {addressing_style!r}"
            )
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"S3 part size must be at least {MIN_PART_SIZE} bytes")
        prefix = prefix.strip("/")
        if prefix:
            try:
                check_key(prefix)
            except ValueError as e:
                raise ValueError(f"invalid S3 key prefix {prefix!r}: {e}") from None
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self.part_size = part_size
        self.client: Any = (
            client
            if client is not None
            else _client(session, addressing_style, self.url, connect_timeout_s, read_timeout_s)
        )
        # Streams: one part uploading while the next fills (the memory bound of writer()).
        self._stream_config = TransferConfig(
            multipart_threshold=part_size,
            multipart_chunksize=part_size,
            max_concurrency=2,
            preferred_transfer_client="classic",
        )
        self._stream_config.max_in_memory_upload_chunks = 1
        # Files: parts read from the file as they are sent, several at once.
        self._file_config = TransferConfig(
            multipart_threshold=part_size,
            multipart_chunksize=part_size,
            max_concurrency=4,
            preferred_transfer_client="classic",
        )
        self._copy_config = TransferConfig(
            multipart_threshold=_COPY_THRESHOLD,
            multipart_chunksize=_COPY_PART,
            max_concurrency=4,
            preferred_transfer_client="classic",
        )

    def __repr__(self) -> str:
        return f"S3Storage({self.url!r})"

    # ---- writing

    def put_file(self, key: str, source: Path, *, move: bool = False) -> int:
        name = self._name(key)
        source = Path(source)
        try:
            size = source.stat().st_size
        except FileNotFoundError:
            raise StorageError(f"cannot store {key}: {source} does not exist") from None
        except OSError as e:
            raise StorageError(f"cannot store {key}: {e}") from e
        try:
            self.client.upload_file(str(source), self.bucket, name, Config=self._file_config)
        except (BotoCoreError, ClientError, S3UploadFailedError) as e:
            raise self._error("write", name, e) from None
        except OSError as e:
            raise StorageError(f"cannot store {key}: {e}") from e
        if move:
            with suppress(FileNotFoundError):
                source.unlink()
        return size

    def copy(self, source: str, target: str) -> int:
        origin, final = self._name(source), self._name(target)
        size = self._head(origin, source)  # NotFoundError before anything is written
        if origin == final:
            return size  # S3 refuses a copy onto itself; objects never change anyway
        try:
            self.client.copy(
                {"Bucket": self.bucket, "Key": origin},
                self.bucket,
                final,
                Config=self._copy_config,
            )
        except (BotoCoreError, ClientError) as e:
            if is_missing(e):
                raise NotFoundError(f"{source} does not exist") from None
            raise self._error("copy to", final, e) from None
        return size

    @contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        name = self._name(key)
        read_fd, write_fd = os.pipe()
        source = PipeSource(read_fd)
        try:
            manager = create_transfer_manager(self.client, self._stream_config)
            future = manager.upload(source, self.bucket, name, subscribers=[CloseWhenDone(source)])
        except BaseException:
            os.close(write_fd)
            source.close()
            raise
        source.future = future
        sink = PipeSink(write_fd, future, lambda e: self._error("write", name, e))
        try:
            yield cast(BinaryIO, sink)
        except BaseException:
            # The caller's own error, re-raised as it is; the upload is aborted (the stream
            # raises instead of ending) and waited for, so nothing is left behind.
            future.cancel()
            sink.close()
            with suppress(Exception):  # what the abort itself raised
                future.result()
            manager.shutdown()
            source.close()
            raise
        source.complete = True  # before the end of the stream, so the reader takes it as one
        sink.close()
        try:
            future.result()
        except Exception as e:
            raise self._error("write", name, e) from None
        finally:
            manager.shutdown()
            source.close()

    # ---- reading

    def open(self, key: str) -> BinaryIO:
        name = self._name(key)
        body = self._get(name, key)
        return cast(BinaryIO, ObjectReader(body, lambda e: self._error("read", name, e)))

    def read_range(
        self, key: str, start: int, end: int | None, chunk: int = 65536
    ) -> Iterator[bytes]:
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"invalid byte range [{start}, {end})")
        if chunk <= 0:
            raise ValueError("chunk must be positive")
        name = self._name(key)
        # Requested now, not on the first next(): an HTTP handler must learn about a missing
        # key before it has sent a 206 status line.
        if end is not None and end == start:
            self._head(name, key)
            return iter(())
        if start == 0 and end is None:
            body = self._get(name, key)
        else:
            span = f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"
            try:
                body = self._get(name, key, Range=span)
            except Unsatisfiable:
                return iter(())  # the object exists; the range starts at or past its end
        return pieces(body, chunk, lambda e: self._error("read", name, e))

    def size(self, key: str) -> int:
        return self._head(self._name(key), key)

    def exists(self, key: str) -> bool:
        name = self._name(key)
        try:
            self._head(name, key)
        except NotFoundError:
            return False
        return True

    # ---- deleting, housekeeping

    def delete_prefix(self, prefix: str) -> int:
        prefix = check_prefix(prefix)
        name = self.prefix + prefix
        try:
            doomed = [name] if self._exists_raw(name) else []
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=name + "/"
            )
            for page in pages:
                doomed.extend(item["Key"] for item in page.get("Contents", ()))
            for at in range(0, len(doomed), _DELETE_BATCH):
                batch = doomed[at : at + _DELETE_BATCH]
                answer = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
                errors = answer.get("Errors") or []
                if errors:
                    first = errors[0]
                    raise StorageError(
                        f"cannot delete {self._where(first.get('Key', name))}: "
                        f"{first.get('Code', 'error')} ({first.get('Message', '')}); "
                        f"{len(errors)} of {len(batch)} keys not deleted"
                    )
        except (BotoCoreError, ClientError) as e:
            raise self._error("delete", name, e) from None
        return len(doomed)

    def local_path(self, key: str) -> Path | None:
        self._name(key)
        return None

    def read_url(self, key: str, lifetime_s: int) -> str | None:
        """A presigned GET of ``key`` (computed locally); S3 answers its Range requests."""
        name = self._name(key)
        try:
            url: str = self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": name}, ExpiresIn=lifetime_s
            )
        except (BotoCoreError, ValueError) as e:  # no credentials, for one
            raise self._error("sign a link to", name, e) from None
        return url

    def usage(self) -> tuple[int, int] | None:
        return None

    def cleanup_temp(self, older_than_s: float, *, now: float | None = None) -> int:
        """Abort the multipart uploads under the prefix that crashed writers left: begun more
        than ``older_than_s`` ago and with no part newer than that; returns how many."""
        cutoff = (time.time() if now is None else now) - older_than_s
        aborted = 0
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            for page in pages:
                for upload in page.get("Uploads", ()):
                    if upload["Initiated"].timestamp() >= cutoff:
                        continue
                    key, upload_id = upload["Key"], upload["UploadId"]
                    if self._last_part_time(key, upload_id) >= cutoff:
                        continue  # a slow writer, still alive
                    try:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=key, UploadId=upload_id
                        )
                    except ClientError as e:
                        if error_code(e) == "NoSuchUpload":
                            continue  # completed or aborted meanwhile
                        raise
                    aborted += 1
        except (BotoCoreError, ClientError) as e:
            raise self._error("clean up multipart uploads in", self.prefix, e) from None
        return aborted

    def check(self) -> None:
        """Verify at deploy time that the bucket is there and the credentials may do what
        stemify does (:func:`stemify.storage.s3_check.s3_checks`); raises StorageError naming
        the first step that failed."""
        from stemify.storage.s3_check import s3_checks

        for result in s3_checks(self):
            if not result.ok:
                raise StorageError(result.detail)

    def health(self) -> str:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as e:
            raise StorageError(f"cannot access bucket s3://{self.bucket}: {describe(e)}") from None
        return f"bucket s3://{self.bucket} reachable"

    # ---- helpers

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _where(self, name: str) -> str:
        return f"s3://{self.bucket}/{name}"

    def _error(self, action: str, name: str, exc: BaseException) -> StorageError:
        return StorageError(f"cannot {action} {self._where(name)}: {describe(exc)}")

    def _head(self, name: str, key: str) -> int:
        try:
            answer = self.client.head_object(Bucket=self.bucket, Key=name)
        except (BotoCoreError, ClientError) as e:
            if is_missing(e):
                raise NotFoundError(f"{key} does not exist") from None
            raise self._error("read", name, e) from None
        return int(answer["ContentLength"])

    def _exists_raw(self, name: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=name)
        except ClientError as e:
            if is_missing(e):
                return False
            raise
        return True

    def _get(self, name: str, key: str, **extra: str) -> Any:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=name, **extra)["Body"]
        except (BotoCoreError, ClientError) as e:
            if is_missing(e):
                raise NotFoundError(f"{key} does not exist") from None
            if isinstance(e, ClientError) and (
                error_code(e) == "InvalidRange" or http_status(e) == 416
            ):
                raise Unsatisfiable from None
            raise self._error("read", name, e) from None

    def _last_part_time(self, key: str, upload_id: str) -> float:
        latest = 0.0
        pages = self.client.get_paginator("list_parts").paginate(
            Bucket=self.bucket, Key=key, UploadId=upload_id
        )
        try:
            for page in pages:
                for part in page.get("Parts", ()):
                    latest = max(latest, part["LastModified"].timestamp())
        except ClientError as e:
            if error_code(e) != "NoSuchUpload":
                raise
        return latest


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://BUCKET/PREFIX`` → ``(bucket, prefix)``; ValueError naming what is wrong."""
    rest = url.split("://", 1)[1] if "://" in url else url.split(":", 1)[-1]
    if "?" in rest or "#" in rest:
        raise ValueError(f"s3 URL must not have a query or fragment: {url!r}")
    bucket, _, prefix = rest.partition("/")
    if "@" in bucket or ":" in bucket:
        # Never echo it: this part may hold a secret.
        raise ValueError(
            "s3 URL must be s3://BUCKET/PREFIX, without credentials or a port: credentials "
            "and the endpoint come from boto3's configuration (AWS_ACCESS_KEY_ID, "
            "AWS_ENDPOINT_URL_S3, ~/.aws/config)"
        )
    if not bucket:
        raise ValueError(f"s3 URL must name a bucket: s3://BUCKET/PREFIX, got {url!r}")
    if not _BUCKET.fullmatch(bucket):
        raise ValueError(f"invalid S3 bucket name {bucket!r} in {url!r}")
    return bucket, prefix


def _client(
    session: Any, addressing_style: str, url: str, connect_timeout_s: float, read_timeout_s: float
) -> Any:
    # More than botocore's 10: every download being served holds a connection. Timeouts
    # shorter than botocore's 60 s, so an unreachable endpoint fails a request in seconds;
    # retries are boto3's own (standard mode: 3 attempts; AWS_MAX_ATTEMPTS, AWS_RETRY_MODE).
    # SigV4 for presigned links too (botocore may presign with SigV2, which S3 dropped).
    options: dict[str, Any] = {
        "max_pool_connections": 32,
        "signature_version": "s3v4",
        "connect_timeout": connect_timeout_s,
        "read_timeout": read_timeout_s,
    }
    if addressing_style != "auto":  # auto: whatever boto3's own configuration says
        options["s3"] = {"addressing_style": addressing_style}
    try:
        session = session if session is not None else boto3.session.Session()
        return session.client("s3", config=Config(**options))
    except (BotoCoreError, ValueError) as e:
        raise StorageError(f"cannot set up the S3 client for {url}: {describe(e)}") from None
