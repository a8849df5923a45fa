"""Storage in a local directory: every key is a file under ``root``.

Writes go to a temp file in ``root/.tmp`` (same filesystem as the final place, so
``os.replace`` makes the object appear atomically, never half-written)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from stemify.errors import NotFoundError, StorageError, storage_error
from stemify.storage.base import RESERVED_SEGMENT, check_key, check_prefix

_COPY_CHUNK = 1 << 20


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.temp_dir = self.root / RESERVED_SEGMENT
        try:
            self.temp_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create the storage directory {self.root}: {e}") from e

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def put_file(self, key: str, source: Path, *, move: bool = False) -> int:
        final = self._path(key)
        source = Path(source)
        try:
            size = source.stat().st_size
            final.parent.mkdir(parents=True, exist_ok=True)
            if move:
                try:
                    os.replace(source, final)
                    return size
                except OSError:
                    # Another filesystem (EXDEV) or a busy target: fall back to copy + delete.
                    pass
            with self.writer(key) as out, source.open("rb") as src:
                shutil.copyfileobj(src, out, _COPY_CHUNK)
            if move:
                source.unlink()
            return size
        except FileNotFoundError as e:
            if not source.exists():
                raise StorageError(f"cannot store {key}: {source} does not exist") from e
            raise storage_error(f"cannot store {key}", e) from e
        except OSError as e:
            raise storage_error(f"cannot store {key}", e) from e

    def copy(self, source: str, target: str) -> int:
        origin = self._path(source)
        if not origin.is_file():
            raise NotFoundError(f"{source} does not exist")
        final = self._path(target)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            # A hard link made under a temporary name, then renamed: instant and atomic, and
            # deleting either key later leaves the other's bytes in place.
            temp = self.temp_dir / f"{uuid.uuid4().hex}.link"
            os.link(origin, temp)
            os.replace(temp, final)
            return final.stat().st_size
        except OSError:
            return self.put_file(target, origin)

    @contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        final = self._path(key)
        try:
            fd, temp_name = tempfile.mkstemp(dir=self.temp_dir, suffix=".part")
        except OSError as e:
            raise storage_error(f"cannot write {key}", e) from e
        temp = Path(temp_name)
        out = os.fdopen(fd, "wb")
        try:
            yield out
        except BaseException:
            # The caller's own error, re-raised as it is; only the partial object goes.
            out.close()
            temp.unlink(missing_ok=True)
            raise
        try:
            out.flush()
            # Without it a crash just after the rename could leave an empty file under key.
            os.fsync(out.fileno())
            out.close()
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp, final)
        except OSError as e:
            out.close()
            temp.unlink(missing_ok=True)
            raise storage_error(f"cannot write {key}", e) from e

    def open(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFoundError(f"{key} does not exist") from None
        except OSError as e:
            raise StorageError(f"cannot read {key}: {e}") from e

    def read_range(
        self, key: str, start: int, end: int | None, chunk: int = 65536
    ) -> Iterator[bytes]:
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"invalid byte range [{start}, {end})")
        if chunk <= 0:
            raise ValueError("chunk must be positive")
        # Opened now, not on the first next(): an HTTP handler must learn about a missing key
        # before it has sent a 206 status line.
        f = self.open(key)
        return _stream(f, start, end, chunk)

    def size(self, key: str) -> int:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFoundError(f"{key} does not exist") from None
        if not path.is_file():
            raise NotFoundError(f"{key} does not exist")
        return st.st_size

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete_prefix(self, prefix: str) -> int:
        prefix = check_prefix(prefix)
        target = self._path(prefix)
        count = 0
        try:
            if target.is_file() or target.is_symlink():
                target.unlink()
                count = 1
            elif target.is_dir():
                count = sum(1 for p in target.rglob("*") if not p.is_dir())
                shutil.rmtree(target)
        except FileNotFoundError:
            pass  # deleted concurrently: the end state is what was asked for
        except OSError as e:
            raise StorageError(f"cannot delete {prefix}: {e}") from e
        # Emptied parent directories stay: removing them would race with a writer that has
        # just created one for a sibling key.
        return count

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        if not path.is_file():
            raise NotFoundError(f"{key} does not exist")
        return path

    def read_url(self, key: str, lifetime_s: int) -> str | None:
        return None

    def usage(self) -> tuple[int, int] | None:
        try:
            du = shutil.disk_usage(self.root)
        except OSError:
            return None
        return du.free, du.total

    def health(self) -> str:
        if not self.temp_dir.is_dir():
            raise StorageError(f"the storage directory {self.root} is missing")
        usage = self.usage()
        if usage is None:
            return "reachable (free space unknown)"
        free, total = usage
        return f"{free / 1e9:.1f} GB free of {total / 1e9:.1f} GB"

    def cleanup_temp(self, older_than_s: float, *, now: float | None = None) -> int:
        """Remove temp files of writes abandoned by a crashed process; returns how many.

        ``older_than_s`` must exceed the longest a live writer can go without writing, or
        its file is removed under it (the write then fails with StorageError)."""
        cutoff = (time.time() if now is None else now) - older_than_s
        removed = 0
        if not self.temp_dir.is_dir():
            return 0
        for entry in self.temp_dir.iterdir():
            try:
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def _path(self, key: str) -> Path:
        path = self.root / check_key(key)
        # check_key already rules out '..'; this also stops a symlink placed inside root.
        if not path.resolve().is_relative_to(self.root):
            raise ValueError(f"storage key leads outside the store: {key!r}")
        return path


def _stream(f: BinaryIO, start: int, end: int | None, chunk: int) -> Iterator[bytes]:
    with f:
        f.seek(start)
        remaining = None if end is None else end - start
        while remaining is None or remaining > 0:
            data = f.read(chunk if remaining is None else min(chunk, remaining))
            if not data:
                return
            if remaining is not None:
                remaining -= len(data)
            yield data
