"""Download official models into a model directory, resumable and verified.

Each file streams into ``<file>.part`` (resumed with an HTTP Range request after an
interruption), is hashed while it streams, and only gets its final name once the hash matches.
The ``<name>.yaml`` bag is written last, so a model is never half-visible.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import httpx

from stemify.errors import ChecksumError, ModelDownloadError, ModelNotFoundError
from stemify.models.catalogue import (
    CatalogueEntry,
    ModelFile,
    file_name_hash,
    local_signatures,
    official_catalogue,
    read_bag_signatures,
)

Progress = Callable[[str, int, int | None], None]
"""``progress(file_name, bytes_done, bytes_total_or_None)``."""

CHUNK_BYTES = 1 << 20
# Long read timeout: release hosts can stall for a while mid-file without having failed.
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=15.0)

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class VerifyResult:
    name: str
    file: str
    ok: bool
    message: str


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def hash_matches(actual: str, expected: str) -> bool:
    """``expected`` is a full sha256 or a prefix of one (demucs names files by the first 8)."""
    return bool(expected) and actual[: len(expected)] == expected.lower()


@contextmanager
def _client_or(client: httpx.Client | None) -> Iterator[httpx.Client]:
    if client is not None:
        yield client
        return
    with httpx.Client(
        timeout=DEFAULT_TIMEOUT, follow_redirects=True, headers={"User-Agent": "stemify"}
    ) as own:
        yield own


def pull(
    names: Sequence[str],
    model_dir: Path,
    base_url: str,
    *,
    catalogue: Mapping[str, CatalogueEntry] | None = None,
    client: httpx.Client | None = None,
    progress: Progress | None = None,
) -> list[Path]:
    """Pull several models by name; returns every file downloaded (see ``pull_model``)."""
    catalogue = official_catalogue() if catalogue is None else catalogue
    unknown = [n for n in names if n not in catalogue]
    if unknown:
        raise ModelNotFoundError(
            f"unknown model {', '.join(repr(n) for n in unknown)}: "
            f"official models are {', '.join(catalogue)}"
        )
    downloaded: list[Path] = []
    with _client_or(client) as http:
        for name in names:
            downloaded += pull_model(
                catalogue[name], model_dir, base_url, client=http, progress=progress
            )
    return downloaded


def pull_model(
    entry: CatalogueEntry,
    model_dir: Path,
    base_url: str,
    *,
    client: httpx.Client | None = None,
    progress: Progress | None = None,
) -> list[Path]:
    """Install ``entry`` into ``model_dir``; returns the weight files downloaded by this call
    (empty when everything was already present and valid).

    Raises ModelDownloadError on network failure (the partial ``.part`` is kept, so running
    again resumes) and ChecksumError when a finished download does not match (it is deleted).
    """
    model_dir.mkdir(parents=True, exist_ok=True)
    downloaded: list[Path] = []
    with _client_or(client) as http:
        for model_file in entry.files:
            final = model_dir / model_file.name
            if _already_valid(final, model_file):
                continue
            url = f"{base_url.rstrip('/')}/{model_file.url_path.lstrip('/')}"
            _download(http, url, model_file, final, progress)
            downloaded.append(final)
    _write_atomic(model_dir / f"{entry.name}.yaml", entry.bag_yaml)
    return downloaded


def _already_valid(path: Path, model_file: ModelFile) -> bool:
    if not path.is_file():
        return False
    if model_file.size is not None and path.stat().st_size != model_file.size:
        return False
    return hash_matches(sha256_file(path), model_file.sha256)


def _download(
    client: httpx.Client,
    url: str,
    model_file: ModelFile,
    final: Path,
    progress: Progress | None,
) -> None:
    part = final.with_name(final.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    if model_file.size is not None and offset > model_file.size:
        part.unlink()
        offset = 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with client.stream("GET", url, headers=headers) as response:
            digest = _receive(response, part, offset, model_file, progress)
    except httpx.HTTPStatusError as exc:
        raise ModelDownloadError(
            f"download of {model_file.name} from {url} failed: HTTP {exc.response.status_code}"
        ) from exc
    except httpx.HTTPError as exc:
        raise ModelDownloadError(
            f"download of {model_file.name} from {url} failed ({type(exc).__name__}: {exc}); "
            "run the command again to resume"
        ) from exc
    except OSError as exc:
        raise ModelDownloadError(f"cannot write {part}: {exc}") from exc

    size = part.stat().st_size
    if model_file.size is not None and size < model_file.size:
        raise ModelDownloadError(
            f"download of {model_file.name} stopped at {size} of {model_file.size} bytes; "
            "run the command again to resume"
        )
    actual = digest.hexdigest()
    if not hash_matches(actual, model_file.sha256):
        part.unlink()
        raise ChecksumError(
            f"checksum mismatch for {model_file.name}: expected {model_file.sha256}, "
            f"got {actual[: len(model_file.sha256)]}; the download was deleted, try again"
        )
    os.replace(part, final)


def _receive(
    response: httpx.Response,
    part: Path,
    offset: int,
    model_file: ModelFile,
    progress: Progress | None,
) -> hashlib._Hash:
    """Write the response body into ``part``; returns the sha256 of the whole file."""
    status = response.status_code
    if status == 416 and offset:
        if model_file.size is None or offset == model_file.size:
            # Nothing past our offset: the .part is complete, only its hash is left to check.
            return _hash_prefix(part, offset)
        _restart(part, model_file, f"the server refused to resume from byte {offset}")
    if status == 206 and offset:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
        if match is None or int(match[1]) != offset:
            _restart(part, model_file, "the server sent the wrong range when resuming")
        total = None if match[3] == "*" else int(match[3])
        digest, mode, done = _hash_prefix(part, offset), "ab", offset
    elif status == 200:
        # Also when the server ignored our Range header: start over from byte zero.
        length = response.headers.get("content-length")
        total = int(length) if length and length.isdigit() else None
        digest, mode, done = hashlib.sha256(), "wb", 0
    else:
        response.raise_for_status()
        raise httpx.HTTPStatusError(
            f"unexpected HTTP {status}", request=response.request, response=response
        )
    total = total if total is not None else model_file.size
    with part.open(mode) as f:
        if progress is not None:
            progress(model_file.name, done, total)
        try:
            for chunk in response.iter_bytes():
                f.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(model_file.name, done, total)
        finally:
            # What arrived before a failure is kept on disk for the next resume.
            f.flush()
            os.fsync(f.fileno())
    return digest


def _restart(part: Path, model_file: ModelFile, reason: str) -> NoReturn:
    # Resuming this .part cannot work; keeping it would fail the same way on every retry.
    part.unlink(missing_ok=True)
    raise ModelDownloadError(
        f"download of {model_file.name} failed: {reason}; the partial download was deleted, "
        "run the command again"
    )


def _hash_prefix(path: Path, length: int) -> hashlib._Hash:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        remaining = length
        while remaining and (chunk := f.read(min(CHUNK_BYTES, remaining))):
            digest.update(chunk)
            remaining -= len(chunk)
    return digest


def _write_atomic(path: Path, text: str) -> None:
    if path.is_file() and path.read_text() == text:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def verify_models(
    model_dir: Path, catalogue: Mapping[str, CatalogueEntry] | None = None
) -> list[VerifyResult]:
    """Rehash every ``.th`` in ``model_dir`` and check every bag's signatures are present.

    A file is checked against the catalogue's full sha256 when it is an official file, else
    against the hash in its name; a ``<sig>.th`` without one can only be reported unchecked.
    """
    catalogue = official_catalogue() if catalogue is None else catalogue
    expected = {f.name: f.sha256 for entry in catalogue.values() for f in entry.files}
    official_names = {
        (entry.name, f.signature): f.name for entry in catalogue.values() for f in entry.files
    }
    on_disk = local_signatures(model_dir)
    owners: dict[str, str] = {}
    results: list[VerifyResult] = []

    for bag_path in sorted(model_dir.glob("*.yaml")) if model_dir.is_dir() else []:
        name = bag_path.stem
        try:
            signatures = read_bag_signatures(bag_path)
        except ValueError as exc:
            results.append(VerifyResult(name, bag_path.name, False, str(exc)))
            continue
        for sig in signatures:
            owners.setdefault(sig, name)
            if sig not in on_disk:
                missing = official_names.get((name, sig), f"{sig}-*.th")
                results.append(VerifyResult(name, missing, False, "missing"))

    for sig, paths in on_disk.items():
        for path in paths:
            results.append(_verify_file(owners.get(sig, sig), path, expected.get(path.name)))
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            results.append(
                VerifyResult(
                    owners.get(sig, sig), names, False, f"several files for signature {sig}"
                )
            )
    return results


def _verify_file(name: str, path: Path, expected: str | None) -> VerifyResult:
    expected = expected or file_name_hash(path.name)
    if not expected:
        return VerifyResult(name, path.name, True, "no checksum in the file name: not verified")
    try:
        actual = sha256_file(path)
    except OSError as exc:
        return VerifyResult(name, path.name, False, f"unreadable: {exc}")
    if hash_matches(actual, expected):
        return VerifyResult(name, path.name, True, "ok")
    return VerifyResult(
        name,
        path.name,
        False,
        f"checksum mismatch: expected {expected}, got {actual[: len(expected)]}",
    )
