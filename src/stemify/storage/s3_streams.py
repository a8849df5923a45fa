"""The byte streams between stemify and boto3: the pipe a writer's bytes go through into the
transfer manager's multipart upload, and readers over a GET's streaming body."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from contextlib import suppress
from typing import Any, cast

from botocore.exceptions import BotoCoreError
from s3transfer.subscribers import BaseSubscriber

from stemify.errors import StorageError


class Unsatisfiable(Exception):
    """A ranged GET starting at or past the end of the object (416)."""


class StreamAborted(Exception):
    """The writer's ``with`` block failed: the stream raises instead of ending."""


class PipeSource:
    """The read end of a writer's pipe, as the transfer manager's non-seekable source.

    Each ``read`` returns a full part (one allocation) or, at the end of the stream, what is
    left; the end counts as the end of the object only once the writer says so."""

    def __init__(self, fd: int) -> None:
        self._file = os.fdopen(fd, "rb")
        self._lock = threading.Lock()
        self.complete = False
        self.future: Any = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, amount: int = -1) -> bytes:
        self._check()
        whole = amount is None or amount < 0
        data = self._file.read(-1 if whole else amount)
        ended = whole or len(data) < amount  # a short read is the end of the stream
        if ended and not self.complete:
            self.close()
            raise StreamAborted("the writer was abandoned")
        self._check()
        return data

    def _check(self) -> None:
        # The transfer failed (a part was refused, the endpoint went away): stop reading, so
        # the writer learns it at its next write instead of streaming into nothing.
        if self.future is not None and self.future.done():
            self.close()
            raise StreamAborted("the upload failed")

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()


class CloseWhenDone(BaseSubscriber):  # type: ignore[misc]
    """Close the pipe's read end once the transfer is over, so a writer blocked on a full
    pipe gets EPIPE rather than waiting forever."""

    def __init__(self, source: PipeSource) -> None:
        self._source = source

    def on_done(self, future: Any, **kwargs: Any) -> None:
        self._source.close()


class PipeSink(io.RawIOBase):
    """The write end of a writer's pipe: what the caller of ``writer()`` writes to."""

    def __init__(self, fd: int, future: Any, error: Any) -> None:
        super().__init__()
        self._fd: int | None = fd
        self._future = future
        self._error = error

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self._fd is None:
            raise ValueError("write to a closed S3 writer")
        if self._future.done():
            raise self._failure()
        view = memoryview(data).cast("B")
        written = 0
        while written < len(view):
            try:
                written += os.write(self._fd, view[written:])
            except BrokenPipeError:
                raise self._failure() from None
        return written

    def _failure(self) -> StorageError:
        # The end of the stream first: the transfer manager may be waiting for more of it,
        # and is done (so result() returns) only once it has stopped reading.
        self.close()
        try:
            self._future.result()
        except Exception as e:  # the transfer's first error: botocore's, as a rule
            return cast(StorageError, self._error(e))
        return cast(StorageError, self._error(RuntimeError("the upload stopped")))

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        super().close()


class ObjectReader(io.RawIOBase):
    """A GET's streaming body as a file; transport errors become StorageError."""

    def __init__(self, body: Any, error: Any) -> None:
        super().__init__()
        self._body = body
        self._error = error

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        try:
            data = self._body.read() if size is None or size < 0 else self._body.read(size)
        except BotoCoreError as e:
            raise self._error(e) from None
        return cast(bytes, data)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            with suppress(Exception):
                self._body.close()
        super().close()


def pieces(body: Any, chunk: int, error: Any) -> Iterator[bytes]:
    try:
        while True:
            try:
                data = body.read(chunk)
            except BotoCoreError as e:
                raise error(e) from None
            if not data:
                return
            yield data
    finally:
        body.close()
