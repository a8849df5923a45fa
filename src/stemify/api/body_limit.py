"""A cap on request bodies for every route but job submission (whose form streams into
storage and is capped by ``max_upload_mb`` there): 413 in the one error shape.

Bodies of other routes are small, so they are read whole before the route runs: the cap holds
even for a route that never reads its body, and for a chunked body with no Content-Length."""

from __future__ import annotations

from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stemify.api.errors import error_response


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int, uploads: Collection[str]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.uploads = frozenset(uploads)  # paths whose POST is a job submission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"] == "POST" and scope["path"] in self.uploads):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is None and b"chunked" not in headers.get(b"transfer-encoding", b""):
            await self.app(scope, receive, send)  # no body (an SSE stream keeps its receive)
            return
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        held: list[Message] = []
        size = 0
        while True:
            message = await receive()
            held.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:  # chunked, or a Content-Length that lied
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return held.pop(0) if held else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"the request body is over the limit of {self.max_bytes // 1024} KiB"
        await error_response(413, "too_large", message)(scope, receive, send)
