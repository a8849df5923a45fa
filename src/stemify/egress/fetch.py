"""Download the media behind a link (a direct file, or a page yt-dlp understands) into a job's
directory, within size, duration and wall-time limits.

Network failures (refused or reset connections, timeouts, HTTP 5xx/408/429) are retried with
exponential backoff; everything else fails at once with one readable line. yt-dlp's own
retries are off so that every failure passes through :func:`classify`.

Where a link may lead is decided by :mod:`stemify.egress.urlguard`: the link itself is checked
before anything is sent, and yt-dlp reaches the network only through a
:class:`~stemify.egress.guarded_proxy.GuardedProxy`, which checks every redirect hop and every
media URL an extractor finds, and connects to the address it checked.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yt_dlp

from stemify.egress.fetch_errors import (
    DeadlineExceeded,
    TooLarge,
    Transient,
    classify,
    timeout_error,
    too_large,
)
from stemify.egress.guarded_proxy import GuardedProxy
from stemify.egress.urlguard import URLPolicy, check_url
from stemify.errors import AudioLimitError, DownloadError, StemifyError
from stemify.formatting import format_duration

_log = logging.getLogger(__name__)

INPUT_STEM = "input"
"""The downloaded file is ``dest_dir/input.<ext>``: names from the link never reach the disk."""
TITLE_MAX_CHARS = 200
DEFAULT_POLICY = URLPolicy()
# A stalled read is retried well before the wall-time limit runs out.
MAX_SOCKET_TIMEOUT_S = 30.0

_SAFE_SUFFIX = re.compile(r"\.[a-z0-9]{1,10}")


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int
    max_duration_s: float
    timeout_s: float = 120.0
    """Wall time of the whole fetch, retries and backoff included."""
    retries: int = 3
    """Extra attempts after a network error; other errors are never retried."""
    backoff_s: float = 1.0
    """Wait before retry n is ``backoff_s * 2**(n-1)``."""

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_duration_s <= 0 or self.timeout_s <= 0:
            raise ValueError("fetch limits must be positive")
        if self.retries < 0 or self.backoff_s < 0:
            raise ValueError("retries and backoff_s must not be negative")


@dataclass(frozen=True)
class Fetched:
    path: Path
    """The downloaded media file, ``dest_dir/input.<ext>``."""
    title: str
    """For display only (printable, at most 200 characters); never used as a file name."""
    extractor: str
    """yt-dlp's extractor: "generic" for a direct file, "youtube", ..."""


def fetch_url(
    url: str, dest_dir: Path, limits: FetchLimits, *, policy: URLPolicy = DEFAULT_POLICY
) -> Fetched:
    """Download the media at ``url`` into ``dest_dir`` (created if needed).

    Raises InvalidURLError (not http(s), malformed; ForbiddenURLError for a refused address,
    the link's own or one it leads to), AudioLimitError (known duration over the limit),
    UploadTooLargeError, or DownloadError. On any failure nothing is left in ``dest_dir``."""
    check_url(url, policy)
    dest_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + limits.timeout_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return _attempt(url, dest_dir, limits, deadline, policy)
        except Transient as e:
            tried = f"{attempt} attempt{'s' if attempt > 1 else ''}"
            if attempt > limits.retries:
                raise DownloadError(f"could not download the link: {e.reason} ({tried})") from None
            delay = limits.backoff_s * 2 ** (attempt - 1)
            if time.monotonic() + delay >= deadline:
                raise DownloadError(
                    f"could not download the link: {e.reason} ({tried} in the "
                    f"{limits.timeout_s:g} s time limit)"
                ) from None
            # The host only: query strings of signed links carry credentials.
            _log.info(
                "fetch from %s: %s; retrying in %.2f s", urlsplit(url).hostname, e.reason, delay
            )
            time.sleep(delay)


def _attempt(
    url: str, dest_dir: Path, limits: FetchLimits, deadline: float, policy: URLPolicy
) -> Fetched:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise timeout_error(limits)
    socket_timeout = max(0.1, min(MAX_SOCKET_TIMEOUT_S, remaining))
    # yt-dlp's partial and helper files land in here; removing it cleans up any failure.
    work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest_dir))
    try:
        # The proxy waits a little longer than yt-dlp, whose own timeout is then what fires.
        with GuardedProxy(policy, timeout_s=socket_timeout + 1.0) as proxy:
            return _download(url, dest_dir, work, limits, deadline, socket_timeout, proxy)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _download(
    url: str,
    dest_dir: Path,
    work: Path,
    limits: FetchLimits,
    deadline: float,
    socket_timeout: float,
    proxy: GuardedProxy,
) -> Fetched:
    options = _options(work, limits, socket_timeout, _guard(deadline, limits.max_bytes))
    options["proxy"] = proxy.url
    with yt_dlp.YoutubeDL(options) as ydl:
        with _translated(limits, proxy, downloading=False):
            raw = ydl.extract_info(url, download=False, process=False)
            # Refused before processing, which would list every entry of the playlist.
            _refuse_playlist(raw)
            info: dict[str, Any] = ydl.process_ie_result(raw, download=False)
        _refuse_playlist(info)
        _check_info(info, limits)
        if time.monotonic() >= deadline:
            raise timeout_error(limits)
        with _translated(limits, proxy, downloading=True):
            done: dict[str, Any] = ydl.process_ie_result(info, download=True)
    downloaded = _downloaded_file(done, limits)
    size = downloaded.stat().st_size
    if size > limits.max_bytes:
        raise too_large(limits, size)
    if size == 0:
        raise DownloadError("could not download the link: the server sent an empty file")
    suffix = downloaded.suffix.lower()
    final = dest_dir / (INPUT_STEM + (suffix if _SAFE_SUFFIX.fullmatch(suffix) else ""))
    os.replace(downloaded, final)
    return Fetched(
        path=final,
        title=clean_title(info.get("title")),
        extractor=str(info.get("extractor") or "unknown"),
    )


def _options(
    work: Path, limits: FetchLimits, socket_timeout: float, hook: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    return {
        "outtmpl": {"default": f"{INPUT_STEM}.%(ext)s"},
        "paths": {"home": str(work), "temp": str(work)},
        "restrictfilenames": True,
        "format": "bestaudio/best",
        "noplaylist": True,
        "extract_flat": "in_playlist",
        "max_filesize": limits.max_bytes,
        "socket_timeout": socket_timeout,
        # We retry ourselves, after classifying the error.
        "retries": 0,
        "fragment_retries": 0,
        "extractor_retries": 0,
        "skip_unavailable_fragments": False,
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "logger": _YtDlpLog(),
        "progress_hooks": [hook],
        "cachedir": False,
        "cookiefile": None,
        "usenetrc": False,
        "overwrites": True,
        "updatetime": False,
        # We decode with our own ffmpeg: no fixups, no post-processors, no ffmpeg downloader.
        "fixup": "never",
        "postprocessors": [],
        "external_downloader": {"default": "native"},
        # No ffmpeg for yt-dlp at all (a path that does not exist): its HLS downloader would
        # otherwise hand streams it cannot handle to an ffmpeg that connects on its own,
        # around the guarded proxy.
        "ffmpeg_location": str(work / "no-ffmpeg"),
    }


def _guard(deadline: float, max_bytes: int) -> Callable[[dict[str, Any]], None]:
    """A progress hook enforcing the wall time and the size as data arrives (yt-dlp's
    ``max_filesize`` only checks a Content-Length, which chunked responses do not send)."""

    def hook(progress: dict[str, Any]) -> None:
        if time.monotonic() > deadline:
            raise DeadlineExceeded
        for field in ("downloaded_bytes", "total_bytes"):
            value = progress.get(field)
            if isinstance(value, int) and value > max_bytes:
                raise TooLarge(value if field == "total_bytes" else 0)

    return hook


def _refuse_playlist(info: Any) -> None:
    if not isinstance(info, dict):
        raise DownloadError("could not download the link: yt-dlp returned no media")
    if info.get("_type") in ("playlist", "multi_video") or "entries" in info:
        raise DownloadError("links to playlists are not supported: send one track")


def _check_info(info: dict[str, Any], limits: FetchLimits) -> None:
    if info.get("is_live") or info.get("live_status") in ("is_live", "is_upcoming"):
        raise DownloadError("live streams are not supported: send a recording")
    duration = info.get("duration")
    if isinstance(duration, int | float) and duration > limits.max_duration_s:
        raise AudioLimitError(
            f"the link's media is {format_duration(duration)} long; "
            f"the limit is {format_duration(limits.max_duration_s)}"
        )
    for field in ("filesize", "filesize_approx"):
        size = info.get(field)
        if isinstance(size, int | float) and size > limits.max_bytes:
            raise too_large(limits, int(size))


def _downloaded_file(done: dict[str, Any], limits: FetchLimits) -> Path:
    downloads = done.get("requested_downloads") or []
    path = downloads[0].get("filepath") if downloads else None
    if not path:
        # yt-dlp skips a file whose Content-Length is over max_filesize without an error.
        raise too_large(limits, 0)
    found = Path(path)
    if not found.is_file():
        raise DownloadError("could not download the link: yt-dlp reported a file it did not write")
    return found


@contextmanager
def _translated(limits: FetchLimits, proxy: GuardedProxy, *, downloading: bool) -> Iterator[None]:
    """Turn whatever yt-dlp raises inside the block into our errors or :class:`Transient`.
    What the proxy saw comes first: yt-dlp only sees its 403 or 502."""
    try:
        yield
    except (StemifyError, Transient):
        raise
    except Exception as e:
        if proxy.error is not None:
            raise proxy.error from None
        if proxy.failure is not None:
            raise Transient(proxy.failure) from e
        raise classify(e, limits, downloading=downloading) from e


def clean_title(raw: object) -> str:
    """A title safe to show: printable, whitespace collapsed, at most 200 characters."""
    text = "" if raw is None else str(raw)
    # isprintable() is False for control and format characters (bidi overrides included).
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    if len(text) > TITLE_MAX_CHARS:
        text = text[: TITLE_MAX_CHARS - 1].rstrip() + "…"
    return text or "untitled"


class _YtDlpLog:
    """yt-dlp's output goes to our log at debug level, never to the worker's stderr; the
    errors that matter reach the caller as exceptions."""

    def debug(self, msg: str) -> None:
        _log.debug("yt-dlp: %s", msg)

    def info(self, msg: str) -> None:
        _log.debug("yt-dlp: %s", msg)

    def warning(self, msg: str) -> None:
        _log.debug("yt-dlp: %s", msg)

    def error(self, msg: str) -> None:
        _log.debug("yt-dlp: %s", msg)
