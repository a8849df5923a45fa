"""The deploy-time check of a storage backend (``stemify storage check``): every operation
stemify needs, tried on a probe object that is removed afterwards, one result per step."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stemify.errors import StemifyError
from stemify.storage.base import Storage

if TYPE_CHECKING:
    from stemify.storage.local import LocalStorage


@dataclass(frozen=True)
class CheckResult:
    name: str  # the step: bucket, put, get, ...
    ok: bool
    detail: str  # what was verified, or why it failed (one line, no credentials)


def storage_checks(storage: Storage) -> Iterator[CheckResult]:
    """The steps for ``storage``'s backend; the first failure is the last result."""
    from stemify.storage.local import LocalStorage

    if isinstance(storage, LocalStorage):
        return local_checks(storage)
    from stemify.storage.s3 import S3Storage
    from stemify.storage.s3_check import s3_checks

    if isinstance(storage, S3Storage):
        return s3_checks(storage)
    raise TypeError(f"no check for {storage!r}")


def local_checks(storage: LocalStorage) -> Iterator[CheckResult]:
    """The directory is there (LocalStorage made it) and a file can be written, read, linked
    and deleted in it."""
    where = str(storage.root)
    key = f"stemify-check-{uuid.uuid4().hex}"
    payload = b"stemify storage check " + key.encode()
    step = "write"
    try:
        with storage.writer(key) as out:
            out.write(payload)
        yield CheckResult("write", True, f"{where} is writable")
        step = "read"
        with storage.open(key) as source:
            if source.read() != payload:
                yield CheckResult("read", False, f"{where} returned other bytes than were written")
                return
        yield CheckResult("read", True, "the probe file reads back")
        step = "copy"
        storage.copy(key, f"{key}.copy")
        yield CheckResult("copy", True, "the probe file can be linked or copied")
        step = "delete"
        storage.delete_prefix(key)
        storage.delete_prefix(f"{key}.copy")
        yield CheckResult("delete", True, "the probe files are deleted")
    except StemifyError as exc:
        yield CheckResult(step, False, exc.message)
    finally:
        for name in (key, f"{key}.copy"):
            with suppress(StemifyError):  # reported above when it mattered
                storage.delete_prefix(name)
    usage = storage.usage()
    if usage is not None:
        free, total = usage
        yield CheckResult("space", True, f"{free / 1e9:.1f} GB free of {total / 1e9:.1f} GB")
