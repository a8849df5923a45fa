"""A private HTTP proxy on 127.0.0.1 that yt-dlp must go through, which checks every
connection with :mod:`stemify.egress.urlguard` and connects only to the address it checked.

Why a proxy: yt-dlp does its own networking (extractor requests, media downloads, HLS/DASH
fragments, each redirect hop), through whichever request handler is installed (urllib,
requests, ...). Its ``proxy`` option is public, stable and honoured by every handler, and
with a proxy the handler never resolves or connects to the target itself: it sends
``GET http://host/path`` or ``CONNECT host:443`` to us. So every hop passes through
:func:`~stemify.egress.urlguard.checked_addresses`, and the socket we open goes to the address
that was checked — a DNS answer that changes afterwards (rebinding) is never looked up.
TLS stays end to end (``CONNECT`` is a blind tunnel), so certificates are still verified by
yt-dlp against the host name. yt-dlp's other ways around a proxy are closed by
:mod:`stemify.egress.fetch`: its per-request proxies come only from ``geo_verification_proxy``
(never set), and it is given no ffmpeg, so it never delegates a stream to an ffmpeg that
would connect by itself.

One proxy serves one fetch attempt. It records the first refusal (:attr:`error`) and the
last network failure (:attr:`failure`) so the caller can report them instead of the generic
proxy error yt-dlp sees.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import socketserver
import threading
from types import TracebackType

from stemify.egress.urlguard import Resolver, URLPolicy, checked_addresses, parse_url
from stemify.errors import DownloadError, ForbiddenURLError, InvalidURLError, StemifyError

MAX_HEAD_BYTES = 64 << 10
_CHUNK = 64 << 10
# Hop-by-hop headers: they describe the connection to the proxy, not to the server.
_HOP_HEADERS = {b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization"}


class GuardedProxy:
    def __init__(
        self,
        policy: URLPolicy,
        *,
        timeout_s: float,
        resolve: Resolver | None = None,
    ) -> None:
        self.policy = policy
        self.timeout_s = timeout_s
        """For connecting, and for silence on a connection before it is dropped."""
        self.resolve = resolve
        self.error: StemifyError | None = None
        """The first connection refused by the policy (or to a host that does not exist)."""
        self.failure: str | None = None
        """Why the last upstream connection failed ("the connection was refused", ...)."""
        self.connections = 0
        """Upstream connections made."""
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = False
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="guarded-proxy", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> GuardedProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            open_sockets = list(self._sockets)
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        # Unblocks handler threads waiting on a stalled server.
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)

    # ---- called from handler threads

    def track(self, sock: socket.socket, *, upstream: bool = False) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._sockets.add(sock)
            self.connections += upstream
            return True

    def untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        with contextlib.suppress(OSError):
            sock.close()

    def refused(self, error: StemifyError) -> None:
        with self._lock:
            if self.error is None:
                self.error = error

    def failed(self, reason: str) -> None:
        with self._lock:
            self.failure = reason


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    proxy: GuardedProxy


class _BadRequest(Exception):
    pass


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        proxy = self.server.proxy
        client: socket.socket = self.request
        if not proxy.track(client):
            return
        upstream: socket.socket | None = None
        try:
            client.settimeout(proxy.timeout_s)
            head, rest = _read_head(client)
            method, target, lines = _request(head)
            text = target.decode("latin-1")
            url = f"https://{text}/" if method == b"CONNECT" else text
            upstream = self._open(proxy, url)
            if upstream is None:
                return
            if method == b"CONNECT":
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                upstream.sendall(rest)
            else:
                upstream.sendall(_forwarded_request(method, target, lines) + rest)
                # The whole request body before waiting for an answer: a server waits for it
                # (a webhook's POST body often arrives after its head).
                _forward_body(client, upstream, _content_length(lines) - len(rest))
                response, body = _read_head(upstream)
                client.sendall(_closing_response(response) + body)
            _relay(client, upstream, proxy.timeout_s)
        except _BadRequest:
            _answer(client, b"400 Bad Request")
        except TimeoutError:
            proxy.failed("the server did not answer in time")
        except OSError:
            pass  # either side went away: the client sees a closed connection
        finally:
            if upstream is not None:
                proxy.untrack(upstream)
            proxy.untrack(client)

    def _open(self, proxy: GuardedProxy, url: str) -> socket.socket | None:
        client: socket.socket = self.request
        try:
            target = parse_url(url, proxy.policy)
            addresses = checked_addresses(target, proxy.policy, resolve=proxy.resolve)
        except InvalidURLError as exc:
            code = ForbiddenURLError if isinstance(exc, ForbiddenURLError) else InvalidURLError
            proxy.refused(
                code(
                    f"could not download the link: it leads on to a link that is not allowed: {exc}"
                )
            )
            _answer(client, b"403 Forbidden")
            return None
        except DownloadError as exc:
            proxy.refused(exc)
            _answer(client, b"502 Bad Gateway")
            return None
        error: OSError | None = None
        for address in addresses:  # every one of them was checked
            try:
                upstream = socket.create_connection((str(address), target.port), proxy.timeout_s)
            except OSError as exc:
                error = exc
                continue
            if not proxy.track(upstream, upstream=True):
                upstream.close()
                return None
            return upstream
        proxy.failed(_connect_failure(error))
        _answer(
            client,
            b"504 Gateway Timeout" if isinstance(error, TimeoutError) else b"502 Bad Gateway",
        )
        return None


def _connect_failure(error: OSError | None) -> str:
    if isinstance(error, TimeoutError):
        return "the server did not answer in time"
    if isinstance(error, ConnectionRefusedError):
        return "the connection was refused"
    return "could not connect to the server"


def _answer(client: socket.socket, status: bytes) -> None:
    with contextlib.suppress(OSError):
        client.sendall(
            b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """An HTTP message head (without its blank line) and whatever arrived after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(_CHUNK)
        if not chunk:
            raise OSError("closed before the end of the headers")
        data += chunk
        if len(data) > MAX_HEAD_BYTES and b"\r\n\r\n" not in data:
            raise _BadRequest
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _request(head: bytes) -> tuple[bytes, bytes, list[bytes]]:
    request_line, *lines = head.split(b"\r\n")
    parts = request_line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        raise _BadRequest
    method, target, _ = parts
    if method != b"CONNECT" and not target.lower().startswith(b"http://"):
        raise _BadRequest  # only absolute http:// targets; https goes through CONNECT
    return method, target, lines


def _content_length(lines: list[bytes]) -> int:
    """The length of the request body. A chunked body is refused: neither yt-dlp nor the
    webhook sender sends one, and relaying it would mean parsing chunks."""
    length = 0
    for line in lines:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding":
            raise _BadRequest
        if name == b"content-length":
            if not value.strip().isdigit():
                raise _BadRequest
            length = int(value.strip())
    return length


def _forward_body(client: socket.socket, upstream: socket.socket, remaining: int) -> None:
    while remaining > 0:
        chunk = client.recv(min(_CHUNK, remaining))
        if not chunk:
            raise OSError("closed in the middle of the request body")
        upstream.sendall(chunk)
        remaining -= len(chunk)


def _forwarded_request(method: bytes, target: bytes, lines: list[bytes]) -> bytes:
    """The request in origin form (``GET /path``), on a connection used once."""
    after_scheme = target[len(b"http://") :]
    cut = min((i for i in (after_scheme.find(c) for c in (b"/", b"?", b"#")) if i >= 0), default=-1)
    path = after_scheme[cut:] if cut >= 0 else b"/"
    path = path.split(b"#", 1)[0] or b"/"
    if path.startswith(b"?"):
        path = b"/" + path
    kept = [line for line in lines if line.split(b":", 1)[0].strip().lower() not in _HOP_HEADERS]
    return b"\r\n".join(
        [method + b" " + path + b" HTTP/1.1", *kept, b"Connection: close", b"", b""]
    )


def _closing_response(head: bytes) -> bytes:
    """The response head with ``Connection: close``, so the client never sends a second
    request (possibly for another host) down a connection already tied to this server."""
    status, *lines = head.split(b"\r\n")
    kept = [line for line in lines if line.split(b":", 1)[0].strip().lower() not in _HOP_HEADERS]
    return b"\r\n".join([status, *kept, b"Connection: close", b"", b""])


def _relay(a: socket.socket, b: socket.socket, idle_s: float) -> None:
    """Copy bytes both ways until either side closes; TimeoutError when both stay silent
    for ``idle_s``."""
    with selectors.DefaultSelector() as selector:
        selector.register(a, selectors.EVENT_READ, b)
        selector.register(b, selectors.EVENT_READ, a)
        while True:
            ready = selector.select(idle_s)
            if not ready:
                raise TimeoutError
            for key, _ in ready:
                source: socket.socket = key.fileobj  # type: ignore[assignment]
                data = source.recv(_CHUNK)
                if not data:
                    return
                key.data.sendall(data)
