"""fetch_url with the real yt-dlp against a real HTTP server on 127.0.0.1.

The server plays scripted failures (dropped connections, 503s, cut bodies, stalls) and logs
every request, so retries are counted rather than assumed. No test leaves the loopback
interface: refused addresses are refused before any connection is made."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from stemify.audio.probe import probe
from stemify.egress.fetch import FetchLimits, clean_title, fetch_url
from stemify.egress.urlguard import URLPolicy, check_url
from stemify.errors import AudioLimitError, DownloadError, InvalidURLError, UploadTooLargeError
from stemify.formatting import format_bytes, format_duration

LOOPBACK = URLPolicy(allow_loopback=True)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

MakeAudio = Callable[..., Path]  # the make_audio fixture of conftest.py

# Generous limits; tests lower the one they are about. Backoff is tiny to keep retries fast.
LIMITS = FetchLimits(max_bytes=10_000_000, max_duration_s=7200, timeout_s=20, backoff_s=0.01)


@dataclass
class Route:
    body: bytes
    content_type: str = "audio/mpeg"
    chunked: bool = False
    """No Content-Length: the body runs until the connection closes."""
    script: list[str] = field(default_factory=list)
    """One action per request, consumed in order: "ok", "drop" (close without a response),
    "503", "cut" (headers, half the body, close), "stall" (never answer); then "ok"."""
    drip_s: float = 0.0
    """Pause between 1 kB pieces of the body."""


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    routes: dict[str, Route]
    requests: list[str]
    lock: threading.Lock
    release: threading.Event


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        server = self.server
        with server.lock:
            server.requests.append(self.path)
            route = server.routes.get(self.path)
            action = route.script.pop(0) if route is not None and route.script else "ok"
        if route is None:
            self.send_error(404)
            return
        if action == "drop":
            self._drop()
            return
        if action == "stall":
            server.release.wait(10)
            self._drop()
            return
        if action == "503":
            self.send_error(503)
            return
        self.send_response(200)
        self.send_header("Content-Type", route.content_type)
        if route.chunked:
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(route.body)))
        self.end_headers()
        body = route.body[: len(route.body) // 2] if action == "cut" else route.body
        try:
            if route.drip_s:
                for i in range(0, len(body), 1024):
                    self.wfile.write(body[i : i + 1024])
                    self.wfile.flush()
                    if server.release.wait(route.drip_s):
                        break
            else:
                self.wfile.write(body)
        except OSError:
            return  # the client gave up: expected in the limit tests
        if action == "cut":
            self._drop()

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


@dataclass
class MediaServer:
    server: _Server

    @property
    def routes(self) -> dict[str, Route]:
        return self.server.routes

    @property
    def requests(self) -> list[str]:
        with self.server.lock:
            return list(self.server.requests)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"


@pytest.fixture
def media_server() -> Iterator[MediaServer]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.routes = {}
    server.requests = []
    server.lock = threading.Lock()
    server.release = threading.Event()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield MediaServer(server)
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def mp3(make_audio: MakeAudio) -> bytes:
    return make_audio(
        "song.mp3", seconds=2.0, args=["-c:a", "libmp3lame", "-b:a", "64k"]
    ).read_bytes()


def leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir()) if dest.exists() else []


def test_direct_mp3_link(media_server: MediaServer, mp3: bytes, tmp_path: Path) -> None:
    media_server.routes["/music/song.mp3"] = Route(mp3)
    dest = tmp_path / "job"

    fetched = fetch_url(media_server.url("/music/song.mp3"), dest, LIMITS, policy=LOOPBACK)

    assert fetched.path == dest / "input.mp3"
    assert fetched.path.read_bytes() == mp3
    assert fetched.extractor == "generic"
    assert fetched.title == "song"
    info = probe(fetched.path)
    assert info.codec == "mp3"
    assert info.duration_s == pytest.approx(2.0, abs=0.1)
    assert leftovers(dest) == ["input.mp3"]  # no temp directory, no .part file
    # yt-dlp looks at the link once (reading only the headers), then downloads it.
    assert media_server.requests == ["/music/song.mp3", "/music/song.mp3"]


def test_link_name_never_reaches_the_disk(
    media_server: MediaServer, mp3: bytes, tmp_path: Path
) -> None:
    media_server.routes["/..%2F..%2Fevil%0A.mp3"] = Route(mp3, content_type="audio/x-weird;ext")
    dest = tmp_path / "jobs" / "1"
    fetched = fetch_url(media_server.url("/..%2F..%2Fevil%0A.mp3"), dest, LIMITS, policy=LOOPBACK)
    assert fetched.path.parent == dest
    assert fetched.path.name.startswith("input")
    assert leftovers(dest) == [fetched.path.name]
    assert list((tmp_path / "jobs").iterdir()) == [dest]
    assert fetched.title.isprintable()


def test_chunked_response_without_length(
    media_server: MediaServer, mp3: bytes, tmp_path: Path
) -> None:
    media_server.routes["/live.mp3"] = Route(mp3, chunked=True)
    fetched = fetch_url(media_server.url("/live.mp3"), tmp_path, LIMITS, policy=LOOPBACK)
    assert fetched.path.read_bytes() == mp3


def test_404_fails_at_once(media_server: MediaServer, tmp_path: Path) -> None:
    dest = tmp_path / "job"
    with pytest.raises(DownloadError) as info:
        fetch_url(media_server.url("/missing.mp3"), dest, LIMITS, policy=LOOPBACK)
    assert info.value.code == "download_failed"
    assert (
        info.value.message == "could not download the link: the server answered HTTP 404 Not Found"
    )
    assert media_server.requests == ["/missing.mp3"]
    assert leftovers(dest) == []


@pytest.mark.parametrize("failure", ["drop", "503"])
def test_network_failures_are_retried(
    media_server: MediaServer, mp3: bytes, tmp_path: Path, failure: str
) -> None:
    media_server.routes["/song.mp3"] = Route(mp3, script=[failure, failure])
    fetched = fetch_url(media_server.url("/song.mp3"), tmp_path, LIMITS, policy=LOOPBACK)
    assert fetched.path.read_bytes() == mp3
    # Two failed attempts, then the look and the download of the third.
    assert len(media_server.requests) == 4


def test_body_cut_during_download_is_retried(
    media_server: MediaServer, mp3: bytes, tmp_path: Path
) -> None:
    # The first request is yt-dlp's look at the link; the second, the download, is cut.
    media_server.routes["/song.mp3"] = Route(mp3, script=["ok", "cut"])
    dest = tmp_path / "job"
    fetched = fetch_url(media_server.url("/song.mp3"), dest, LIMITS, policy=LOOPBACK)
    assert fetched.path.read_bytes() == mp3
    assert len(media_server.requests) == 4
    assert leftovers(dest) == ["input.mp3"]


def test_503_during_download_is_retried(
    media_server: MediaServer, mp3: bytes, tmp_path: Path
) -> None:
    media_server.routes["/song.mp3"] = Route(mp3, script=["ok", "503"])
    fetched = fetch_url(media_server.url("/song.mp3"), tmp_path, LIMITS, policy=LOOPBACK)
    assert fetched.path.read_bytes() == mp3
    assert len(media_server.requests) == 4


def test_gives_up_after_retries(media_server: MediaServer, tmp_path: Path) -> None:
    media_server.routes["/song.mp3"] = Route(b"", script=["drop"] * 100)
    limits = FetchLimits(max_bytes=10**6, max_duration_s=600, retries=2, backoff_s=0.01)
    dest = tmp_path / "job"
    with pytest.raises(DownloadError) as info:
        fetch_url(media_server.url("/song.mp3"), dest, limits, policy=LOOPBACK)
    assert info.value.message == (
        "could not download the link: the server closed the connection (3 attempts)"
    )
    assert len(media_server.requests) == 3
    assert leftovers(dest) == []


def test_connection_refused_is_retried(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port any more.
    limits = FetchLimits(max_bytes=10**6, max_duration_s=600, retries=1, backoff_s=0.01)
    with pytest.raises(DownloadError, match=r"the connection was refused \(2 attempts\)$"):
        fetch_url(f"http://127.0.0.1:{port}/x.mp3", tmp_path, limits, policy=LOOPBACK)


def test_over_max_bytes_is_refused(media_server: MediaServer, mp3: bytes, tmp_path: Path) -> None:
    media_server.routes["/song.mp3"] = Route(mp3)
    limits = FetchLimits(max_bytes=len(mp3) // 2, max_duration_s=600, backoff_s=0.01)
    dest = tmp_path / "job"
    with pytest.raises(UploadTooLargeError) as info:
        fetch_url(media_server.url("/song.mp3"), dest, limits, policy=LOOPBACK)
    assert info.value.code == "too_large"
    assert "larger than the limit of" in info.value.message
    assert leftovers(dest) == []
    assert len(media_server.requests) == 2  # not retried


def test_over_max_bytes_without_content_length_is_cut_off(
    media_server: MediaServer, tmp_path: Path
) -> None:
    # yt-dlp's max_filesize needs a Content-Length; the progress hook counts the bytes.
    media_server.routes["/big.mp3"] = Route(b"\xff" * 400_000, chunked=True)
    limits = FetchLimits(max_bytes=50_000, max_duration_s=600, backoff_s=0.01)
    dest = tmp_path / "job"
    with pytest.raises(UploadTooLargeError, match="the limit of 50 kB"):
        fetch_url(media_server.url("/big.mp3"), dest, limits, policy=LOOPBACK)
    assert leftovers(dest) == []


def test_known_duration_over_the_limit_is_refused_before_download(
    media_server: MediaServer, mp3: bytes, tmp_path: Path
) -> None:
    # The page declares its audio in JSON-LD, which yt-dlp's generic extractor reads.
    page = (
        "<html><head><title>Long mix</title>"
        '<script type="application/ld+json">{"@context": "https://schema.org", '
        '"@type": "AudioObject", "name": "Long mix", "duration": "PT3H12M", '
        f'"contentUrl": "{media_server.url("/long.mp3")}"}}</script></head></html>'
    )
    media_server.routes["/mix"] = Route(page.encode(), content_type="text/html")
    media_server.routes["/long.mp3"] = Route(mp3)
    limits = FetchLimits(max_bytes=10**6, max_duration_s=7200, backoff_s=0.01)
    with pytest.raises(AudioLimitError) as info:
        fetch_url(media_server.url("/mix"), tmp_path / "job", limits, policy=LOOPBACK)
    assert info.value.message == "the link's media is 3:12:00 long; the limit is 2:00:00"
    # Only yt-dlp's look at the page and at the media's headers; never a download.
    assert media_server.requests.count("/long.mp3") <= 1


def test_page_with_one_audio_element(media_server: MediaServer, mp3: bytes, tmp_path: Path) -> None:
    page = b"<html><head><title>My \x07demo</title></head><body><audio src='/a.mp3'></audio>"
    media_server.routes["/page"] = Route(page, content_type="text/html")
    media_server.routes["/a.mp3"] = Route(mp3)
    fetched = fetch_url(media_server.url("/page"), tmp_path, LIMITS, policy=LOOPBACK)
    assert fetched.path.read_bytes() == mp3
    assert fetched.title.startswith("My demo")
    assert fetched.extractor == "html5"


def test_playlist_is_refused(media_server: MediaServer, mp3: bytes, tmp_path: Path) -> None:
    page = b"<html><title>Two</title><audio src='/a.mp3'></audio><audio src='/b.mp3'></audio>"
    media_server.routes["/page"] = Route(page, content_type="text/html")
    media_server.routes["/a.mp3"] = Route(mp3)
    media_server.routes["/b.mp3"] = Route(mp3)
    with pytest.raises(DownloadError) as info:
        fetch_url(media_server.url("/page"), tmp_path / "job", LIMITS, policy=LOOPBACK)
    assert info.value.message == "links to playlists are not supported: send one track"
    assert media_server.requests == ["/page"]


def test_html_page_without_media(media_server: MediaServer, tmp_path: Path) -> None:
    page = b"<!DOCTYPE html><html><head><title>Hello</title></head><body>Hi!</body></html>"
    media_server.routes["/"] = Route(page, content_type="text/html")
    dest = tmp_path / "job"
    with pytest.raises(DownloadError) as info:
        fetch_url(media_server.url("/"), dest, LIMITS, policy=LOOPBACK)
    message = info.value.message
    assert message.startswith("could not download the link: no audio or video found there")
    assert "ERROR" not in message
    assert "[generic]" not in message
    assert media_server.requests == ["/"]  # not retried
    assert leftovers(dest) == []


def test_wall_time_limit(media_server: MediaServer, tmp_path: Path) -> None:
    # 400 kB at about 1 kB per 20 ms: about 8 s, against a 1 s limit.
    media_server.routes["/slow.mp3"] = Route(b"\xff" * 400_000, drip_s=0.02)
    limits = FetchLimits(max_bytes=10**6, max_duration_s=600, timeout_s=1.0, backoff_s=0.01)
    dest = tmp_path / "job"
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"took longer than the 1 s limit"):
        fetch_url(media_server.url("/slow.mp3"), dest, limits, policy=LOOPBACK)
    assert time.monotonic() - started < 5
    assert leftovers(dest) == []


def test_stalled_server_times_out(media_server: MediaServer, tmp_path: Path) -> None:
    media_server.routes["/song.mp3"] = Route(b"", script=["stall"] * 10)
    limits = FetchLimits(max_bytes=10**6, max_duration_s=600, timeout_s=1.0, retries=3)
    started = time.monotonic()
    with pytest.raises(DownloadError, match="the server did not answer in time"):
        fetch_url(media_server.url("/song.mp3"), tmp_path, limits, policy=LOOPBACK)
    # The socket timeout is cut to the time left, so a stall cannot outlast the limit by much.
    assert time.monotonic() - started < 4


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/song.mp3",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "127.0.0.1/song.mp3",
        "http:///song.mp3",
        "http://127.0.0.1:99999/song.mp3",
        "http://127.0.0.1/a song.mp3",
        "http://127.0.0.1/\x00",
    ],
)
def test_unacceptable_links(url: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidURLError) as info:
        fetch_url(url, tmp_path / "job", LIMITS, policy=LOOPBACK)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, DownloadError)
    assert info.value.code == "invalid_url"
    assert not (tmp_path / "job").exists()


def test_loopback_is_refused_unless_allowed(media_server: MediaServer, mp3: bytes) -> None:
    media_server.routes["/song.mp3"] = Route(mp3)
    port = media_server.server.server_port
    for url in [
        media_server.url("/song.mp3"),
        f"http://localhost:{port}/song.mp3",
        f"http://[::ffff:127.0.0.1]:{port}/song.mp3",
    ]:
        with pytest.raises(InvalidURLError, match="local or private network"):
            check_url(url, URLPolicy())
    assert media_server.requests == []


@pytest.mark.parametrize(
    "host", ["10.1.2.3", "192.168.0.10", "169.254.169.254", "0.0.0.0", "[fe80::1]", "[fd00::1]"]
)
def test_private_addresses_are_refused_even_with_loopback_allowed(host: str) -> None:
    # Literal addresses: resolving them sends nothing over the network.
    with pytest.raises(InvalidURLError, match="local or private network"):
        check_url(f"http://{host}/song.mp3", LOOPBACK)


def test_refused_link_leaves_no_request(
    media_server: MediaServer, mp3: bytes, tmp_path: Path
) -> None:
    media_server.routes["/song.mp3"] = Route(mp3)
    with pytest.raises(InvalidURLError):
        fetch_url(media_server.url("/song.mp3"), tmp_path / "job", LIMITS)
    assert media_server.requests == []
    assert not (tmp_path / "job").exists()


def test_clean_title() -> None:
    assert clean_title("  Song\tName\n(Live)  ") == "Song Name (Live)"
    assert clean_title("evil\u202etxt.exe\x00") == "evil txt.exe"
    assert clean_title(None) == "untitled"
    assert clean_title("") == "untitled"
    long = clean_title("x" * 500)
    assert len(long) == 200
    assert long.endswith("…")


def test_formats() -> None:
    assert format_duration(3 * 3600 + 12 * 60) == "3:12:00"
    assert format_duration(7200) == "2:00:00"
    assert format_duration(245.4) == "4:05"
    assert format_bytes(500_000_000) == "500 MB"
    assert format_bytes(1_234_567) == "1.2 MB"
    assert format_bytes(999) == "999 bytes"


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        FetchLimits(max_bytes=0, max_duration_s=10)
    with pytest.raises(ValueError):
        FetchLimits(max_bytes=10, max_duration_s=10, retries=-1)
