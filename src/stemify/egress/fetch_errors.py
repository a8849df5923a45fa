"""What a failed download was, in one readable line: a network failure worth retrying
(:class:`Transient`), a file over the limit, a download over its time, an unsupported page, or
whatever else yt-dlp said. :func:`classify` reads the whole chain of causes, since yt-dlp wraps
the errors that matter in its own."""

from __future__ import annotations

import errno
import http.client
import logging
import re
import socket
from collections.abc import Iterator
from typing import Protocol

from yt_dlp.networking.exceptions import CertificateVerifyError, HTTPError, TransportError
from yt_dlp.utils import ContentTooShortError, UnsupportedError, YoutubeDLError
from yt_dlp.utils import DownloadError as YtDlpDownloadError

from stemify.errors import DownloadError, UploadTooLargeError
from stemify.formatting import format_bytes

_log = logging.getLogger("stemify.egress.fetch")

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# "[generic] some-id: " / "[download] " prefixes of yt-dlp messages.
_YTDLP_PREFIX = re.compile(r"^(?:ERROR:\s*)?(?:\[[^\]]+\]\s*(?:[^\s:]+:\s+)?)?")
_NETWORK_ERRNOS = {
    errno.ENETDOWN,
    errno.ENETUNREACH,
    errno.EHOSTDOWN,
    errno.EHOSTUNREACH,
    errno.ECONNABORTED,
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ETIMEDOUT,
}


class Limits(Protocol):
    """What the messages need of the fetch's limits."""

    @property
    def max_bytes(self) -> int: ...

    @property
    def timeout_s(self) -> float: ...


class Transient(Exception):
    """A failure worth retrying; ``reason`` is already readable."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Raised from the progress hook. Not OSError subclasses: yt-dlp turns OSErrors raised while
# downloading into its own errors, and these must reach classify intact.
class DeadlineExceeded(Exception):
    pass


class TooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def classify(exc: Exception, limits: Limits, *, downloading: bool) -> Exception:
    chain = list(_causes(exc))
    for e in chain:
        if isinstance(e, DeadlineExceeded):
            return timeout_error(limits)
        if isinstance(e, TooLarge):
            return too_large(limits, e.size)
    for e in chain:
        if isinstance(e, HTTPError):
            status = int(e.status)
            answered = f"the server answered HTTP {status} {e.reason or ''}".rstrip()
            if status >= 500 or status in (408, 429):
                return Transient(answered)
            return DownloadError(f"could not download the link: {answered}")
        if isinstance(e, CertificateVerifyError):
            return DownloadError(
                "could not download the link: the site's TLS certificate is not valid"
            )
        if isinstance(e, TransportError | ContentTooShortError | http.client.HTTPException) or (
            _is_network_os_error(e)
        ):
            return Transient(_network_reason(chain))
        if isinstance(e, UnsupportedError):
            return DownloadError(
                "could not download the link: no audio or video found there (not a media "
                "file, and not a page yt-dlp can read)"
            )
    message = clean_message(str(getattr(exc, "msg", None) or exc))
    if downloading and isinstance(exc, YtDlpDownloadError) and message.startswith("Got error:"):
        # yt-dlp's HTTP downloader reports the errors it would have retried (connection cut,
        # short body, 5xx) only as text, without the exception.
        return Transient(reason_from_text(message.removeprefix("Got error:").strip()))
    if not isinstance(exc, YoutubeDLError):
        _log.warning("unexpected error from yt-dlp", exc_info=exc)
    return DownloadError(f"could not download the link: {message or 'yt-dlp failed'}")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything behind it: ``__cause__``/``__context__``, yt-dlp's ``cause``
    and ``exc_info``; each once, nearest first."""
    seen: set[int] = set()
    queue: list[BaseException] = [exc]
    while queue:
        e = queue.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        exc_info = getattr(e, "exc_info", None)
        linked = [
            getattr(e, "cause", None),
            exc_info[1] if isinstance(exc_info, tuple) and len(exc_info) > 1 else None,
            e.__cause__,
            e.__context__,
        ]
        queue.extend(x for x in linked if isinstance(x, BaseException))


def _is_network_os_error(e: BaseException) -> bool:
    # Not every OSError: a full disk or a permission error here is ours, not the network's.
    return isinstance(e, ConnectionError | TimeoutError | socket.gaierror) or (
        isinstance(e, OSError) and e.errno in _NETWORK_ERRNOS
    )


def _network_reason(chain: list[BaseException]) -> str:
    for e in chain:
        if isinstance(e, TimeoutError):
            return "the server did not answer in time"
        if isinstance(e, ConnectionRefusedError):
            return "the connection was refused"
        if isinstance(e, ContentTooShortError | http.client.IncompleteRead):
            return "the connection was cut before the end of the file"
        if isinstance(e, ConnectionError | http.client.RemoteDisconnected):
            return "the server closed the connection"
        if isinstance(e, socket.gaierror):
            return "the host name could not be resolved"
    transport = next((e for e in chain if isinstance(e, TransportError)), chain[0])
    return reason_from_text(clean_message(str(transport))) or "a network error"


def reason_from_text(text: str) -> str:
    """yt-dlp's downloader words for the errors it reports without an exception."""
    if m := re.fullmatch(r"HTTP Error (\d{3}): ?(.*)", text):
        return f"the server answered HTTP {m[1]} {m[2]}".rstrip()
    if re.fullmatch(r"Downloaded \d+ bytes, expected \d+ bytes", text):
        return "the connection was cut before the end of the file"
    if "timed out" in text:
        return "the server did not answer in time"
    return text


def clean_message(text: str) -> str:
    """One line of a yt-dlp message, without colour codes, "ERROR: [generic] id: " and
    "(caused by ...)" noise."""
    text = _ANSI.sub("", text).replace("\r", "").strip()
    text = text.splitlines()[0] if text else ""
    text = _YTDLP_PREFIX.sub("", text, count=1)
    text = re.sub(r"\s*\(caused by .*\)\s*$", "", text)
    text = re.sub(r";\s*please report this issue.*$", "", text, flags=re.IGNORECASE)
    return text.strip().rstrip(".")[:300]


def timeout_error(limits: Limits) -> DownloadError:
    return DownloadError(
        f"could not download the link: it took longer than the {limits.timeout_s:g} s limit"
    )


def too_large(limits: Limits, size: int) -> UploadTooLargeError:
    limit = format_bytes(limits.max_bytes)
    if size > limits.max_bytes:
        return UploadTooLargeError(f"the link's file is {format_bytes(size)}; the limit is {limit}")
    return UploadTooLargeError(f"the link's file is larger than the limit of {limit}")
