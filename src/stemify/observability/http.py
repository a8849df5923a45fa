"""The API's side of observability: a request id and a log line per request, and request
metrics by route template (``/metrics`` itself is served by :mod:`stemify.api.routes_metrics`)."""

from __future__ import annotations

import logging
import os
import re
import time

from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stemify.observability.logging import bound
from stemify.observability.metrics import Metrics

log = logging.getLogger("stemify.http")

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_NAME = REQUEST_ID_HEADER.lower().encode()
# A caller's id is kept only if it is short and plain: it goes into every log line.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_JOB_PATH = re.compile(r"/api/v1/jobs/([0-9a-zA-Z_-]{1,64})(?:/|$)")
# Probes and scrapes arrive every few seconds: logged only at DEBUG.
_QUIET_PATHS = frozenset({"/metrics", "/api/v1/health", "/api/v1/ready"})
UNMATCHED = "unmatched"


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name.lower() == b"x-request-id":
            text = value.decode("latin-1")
            if _SANE_REQUEST_ID.fullmatch(text):
                return text
            break
    # 32 random hex digits, as uuid4().hex without building a UUID (a third of the cost).
    return os.urandom(16).hex()


class ObservabilityMiddleware:
    """Binds the request id (and a job id found in the path) for every log line of the
    request, echoes ``X-Request-ID``, logs one line per request and records its metrics.

    Latency is measured to the response headers, so a long SSE stream or download counts for
    how long the client waited to start receiving, not for how long it listened."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope.get("headers", []))
        context: dict[str, str] = {"request_id": request_id}
        job = _JOB_PATH.match(scope.get("path", ""))
        if job:
            context["job_id"] = job.group(1)
        started = time.monotonic()
        first_byte: list[float] = []
        status: list[int] = []

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                first_byte.append(time.monotonic() - started)
                status.append(int(message["status"]))
                headers = list(message.get("headers", []))
                headers.append((_REQUEST_ID_NAME, request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        with bound(**context):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                if not status:
                    status.append(500)
                raise
            finally:
                self._record(scope, status[0] if status else 500, first_byte, started)

    def _record(self, scope: Scope, status: int, first_byte: list[float], started: float) -> None:
        route = route_template(scope)
        method = str(scope.get("method", ""))
        seconds = first_byte[0] if first_byte else time.monotonic() - started
        self.metrics.request(route, method, status, seconds)
        path = str(scope.get("path", ""))
        level = logging.DEBUG if path in _QUIET_PATHS else logging.INFO
        if not log.isEnabledFor(level):
            return
        # The record is made here rather than by log.log(): that one looks for the caller's
        # file and line by walking the stack, on every request, for fields no line shows.
        record = log.makeRecord(
            log.name,
            level,
            __file__,
            0,
            "%s %s %d",
            # never the query string: signed links carry their signature there
            (method, path, status),
            None,
            "_record",
            {"route": route, "status": status, "duration_ms": round(seconds * 1000, 1)},
        )
        log.handle(record)


def route_template(scope: Scope) -> str:
    """The matched route's path with its router's prefix (``/api/v1/jobs/{job_id}``), so
    metrics have one label per route, not one per job; ``unmatched`` when nothing matched."""
    route = scope.get("route")
    if route is None:
        return UNMATCHED
    if isinstance(route, Mount):
        return f"{route.path}/{{path}}"
    relative = str(getattr(route, "path", ""))
    if not relative or ":path}" in relative:
        return relative or UNMATCHED
    # FastAPI keeps the route's own path; its router's prefix is the leading part of the
    # request path with as many segments as the request has beyond the route's.
    segments = str(scope.get("path", "")).rstrip("/").split("/")
    extra = len(segments) - len(relative.rstrip("/").split("/"))
    prefix = "/".join(segments[: extra + 1]) if extra > 0 else ""
    return prefix + relative
