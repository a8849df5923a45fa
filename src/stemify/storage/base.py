"""The storage interface: named byte streams under ``/``-separated keys, shaped so that an
object store (S3) can implement it as well as a local directory."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO, Protocol


class Storage(Protocol):
    def put_file(self, key: str, source: Path, *, move: bool = False) -> int:
        """Store a local file under ``key`` atomically (copied, or moved when ``move``);
        returns its size in bytes."""
        ...

    def copy(self, source: str, target: str) -> int:
        """Copy the object ``source`` to ``target`` (objects never change once written, so a
        backend may share the bytes); returns the size."""
        ...

    def writer(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A stream to write ``key``; the object becomes visible only if the ``with`` block
        exits without an exception, and nothing is left behind otherwise."""
        ...

    def open(self, key: str) -> BinaryIO:
        """Read ``key``; raises :class:`~stemify.errors.NotFoundError` if it is missing."""
        ...

    def read_range(
        self, key: str, start: int, end: int | None, chunk: int = 65536
    ) -> Iterator[bytes]:
        """Bytes ``[start, end)`` of ``key`` (``end=None``: to the end), in pieces of at most
        ``chunk`` bytes; a range past the end yields what exists, possibly nothing.
        NotFoundError is raised by the call itself, before the first piece."""
        ...

    def size(self, key: str) -> int: ...

    def exists(self, key: str) -> bool: ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete the key ``prefix`` and every key under ``prefix/``; returns how many."""
        ...

    def local_path(self, key: str) -> Path | None:
        """A filesystem path of the existing object ``key`` when the backend has one (so the
        engine can read in place); None for remote backends."""
        ...

    def read_url(self, key: str, lifetime_s: int) -> str | None:
        """An HTTP URL from which a local tool (ffprobe) reads the existing object ``key`` by
        ranges for ``lifetime_s`` seconds, for remote backends; None when ``local_path`` has
        the object in place."""
        ...

    def usage(self) -> tuple[int, int] | None:
        """``(free_bytes, total_bytes)`` of the backing volume, or None when unknown."""
        ...

    def health(self) -> str:
        """One line for /ready once the backend answered (free space, a reachable bucket);
        raises StorageError when it does not."""
        ...

    def cleanup_temp(self, older_than_s: float) -> int:
        """Remove what writes abandoned by a crashed process left behind (untouched for
        ``older_than_s``); returns how many."""
        ...


# The first segment is reserved for a backend's own files (LocalStorage's temp files).
RESERVED_SEGMENT = ".tmp"


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key, else raise ValueError.

    Keys are built from job ids and stem names, but any of those could one day come from a
    request; a key must never be able to name a file outside the store."""
    if not isinstance(key, str) or not key:
        raise ValueError("storage key must be a non-empty string")
    if "\\" in key:
        raise ValueError(f"storage key must not contain a backslash: {key!r}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise ValueError(f"storage key must not contain control characters: {key!r}")
    if key.startswith("/"):
        raise ValueError(f"storage key must be relative: {key!r}")
    segments = key.split("/")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise ValueError(f"storage key has an empty, '.' or '..' segment: {key!r}")
    if segments[0] == RESERVED_SEGMENT:
        raise ValueError(f"storage key must not start with {RESERVED_SEGMENT!r}: {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    """A prefix is a key, optionally with one trailing ``/``; returned without it."""
    if isinstance(prefix, str) and prefix.endswith("/"):
        prefix = prefix[:-1]
    return check_key(prefix)


def local_file(storage: Storage, key: str, scratch: Path) -> Path:
    """A file with the object's bytes: in place when the backend keeps files, else a copy in
    ``scratch`` (ffmpeg and the engine read paths, not streams)."""
    path = storage.local_path(key)
    if path is not None:
        return path
    copy = scratch / key.replace("/", "_")
    with storage.open(key) as source, copy.open("wb") as target:
        shutil.copyfileobj(source, target, 1 << 20)
    return copy
