"""Security headers on every response: errors, 404s, downloads, SSE, static files, /docs.

The one Content-Security-Policy keeps every asset on this server. FastAPI's /docs page is the
exception: it loads Swagger UI from a CDN and starts it with an inline script, so it gets a
policy naming exactly those CDN URLs and the hash of that one script, read from the page."""

from __future__ import annotations

import base64
import hashlib
import re

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def page_csp(download_origins: tuple[str, ...] = ()) -> str:
    """The policy of everything but /docs; ``download_origins``: where the stems' direct links
    point (the bucket or the CDN), which the page fetches for its player."""
    extra = "".join(f" {origin}" for origin in download_origins)
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        f"media-src 'self' blob:{extra}; connect-src 'self'{extra}; font-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


CSP = page_csp()
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Signed download links carry their signature in the query: never leak them onward.
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_SCRIPT = re.compile(rb"<script(?P<attrs>[^>]*)>(?P<body>.*?)</script>", re.S)
_SRC = re.compile(rb'\b(?:src|href)="(https://[^"]+)"')


def docs_csp(page: bytes) -> str:
    """The policy of the Swagger UI page: its CDN assets by full URL, its inline script by
    hash, API calls to this server only."""
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(m.group("body")).digest()).decode() + "'"
        for m in _SCRIPT.finditer(page)
        if b"src=" not in m.group("attrs")
    ]
    urls = [u.decode() for u in _SRC.findall(page)]
    scripts = [u for u in urls if u.endswith(".js")]
    styles = [u for u in urls if u.endswith(".css")]
    images = [u for u in urls if u.endswith((".png", ".ico", ".svg"))]
    return (
        f"default-src 'none'; script-src {' '.join([*scripts, *hashes])}; "
        f"style-src {' '.join(styles)}; img-src 'self' data: {' '.join(images)}; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ).replace("  ", " ")


class SecurityHeadersMiddleware:
    """Pure ASGI (streams pass straight through); HSTS only when the request came over https,
    as seen by the server or told by a trusted proxy (see ProxyHeadersMiddleware)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        docs_path: str | None,
        hsts_max_age_s: int,
        download_origins: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.csp = page_csp(download_origins)
        self.docs_path = docs_path
        self.hsts = f"max-age={hsts_max_age_s}" if hsts_max_age_s > 0 else ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.docs_path is not None and scope["path"] == self.docs_path:
            await self._docs(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                self._add(scope, MutableHeaders(scope=message), self.csp)
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _add(self, scope: Scope, headers: MutableHeaders, csp: str) -> None:
        for name, value in HEADERS.items():
            headers[name] = value
        headers["Content-Security-Policy"] = csp
        if self.hsts and scope.get("scheme") == "https":
            headers["Strict-Transport-Security"] = self.hsts

    async def _docs(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The docs page is small: hold it whole to hash its inline script."""
        start: Message | None = None
        body = b""

        async def hold(message: Message) -> None:
            nonlocal start, body
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] == "http.response.body":
                body += message.get("body", b"")
                if not message.get("more_body", False):
                    assert start is not None
                    headers = MutableHeaders(scope=start)
                    self._add(scope, headers, docs_csp(body))
                    await send(start)
                    await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, hold)
