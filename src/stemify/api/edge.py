"""The HTTP edge of the app: security headers, trusted proxies, CORS and body limits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from stemify.api.body_limit import BodyLimitMiddleware
from stemify.api.errors import error_response
from stemify.api.security_headers import SecurityHeadersMiddleware
from stemify.settings import Settings


class EdgeApp(FastAPI):
    """FastAPI with the security headers outside everything, the 500 handler included (that
    one runs outside ordinary middleware), and forwarded headers believed only from trusted
    proxies, before anything reads the client address or the scheme."""

    def __init__(
        self,
        settings: Settings,
        download_origins: Callable[[], tuple[str, ...]] = tuple,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.edge_settings = settings
        self.download_origins = download_origins

    def build_middleware_stack(self) -> ASGIApp:
        settings = self.edge_settings
        stack: ASGIApp = SecurityHeadersMiddleware(
            super().build_middleware_stack(),
            docs_path=self.docs_url,
            hsts_max_age_s=settings.hsts_max_age_s,
            download_origins=self.download_origins(),
        )
        if settings.trusted_proxies:
            # uvicorn types ASGI apps more narrowly than Starlette; both are plain ASGI.
            proxied = ProxyHeadersMiddleware(cast(Any, stack), settings.trusted_proxies)
            stack = cast(ASGIApp, proxied)
        return stack


class _CORSMiddleware(CORSMiddleware):
    """Starlette's, with a refused preflight in the one error shape."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        refused = bytes(response.body).decode()  # "Disallowed CORS origin, headers"
        headers = {k: v for k, v in response.headers.items() if k.startswith("access-control-")}
        message = refused.replace("Disallowed CORS", "this cross-origin request is not allowed:")
        return error_response(400, "bad_request", message, headers)


def install_edge(app: FastAPI, settings: Settings, *, uploads: list[str]) -> None:
    """``uploads``: paths whose POST bodies are capped by the upload limit instead."""
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_kb << 10, uploads=uploads)
    if settings.cors_origins:
        app.add_middleware(
            _CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["X-API-Key", "Authorization", "Idempotency-Key", "Content-Type"],
            expose_headers=["Retry-After", "Content-Disposition", "Content-Range"],
            max_age=600,
        )
