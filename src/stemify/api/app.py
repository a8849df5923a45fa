"""The FastAPI application: routes under ``/api/v1``, one error shape, shared services."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import anyio
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from stemify import __version__
from stemify.api import (
    routes_downloads,
    routes_jobs,
    routes_metrics,
    routes_system,
    routes_usage,
)
from stemify.api.edge import EdgeApp, install_edge
from stemify.api.error_schema import error_responses
from stemify.api.errors import install_error_handlers
from stemify.api.rate_limits import RateLimiter
from stemify.observability import http as observability
from stemify.services import Services
from stemify.web import mount_web

API_PREFIX = "/api/v1"
# Threads that may sit waiting for job events at once (one per open SSE stream), apart from
# the default pool, so many listeners cannot starve ordinary requests of threads.
EVENT_WAITERS = 256


def create_app(
    services: Services, *, auth_required: bool, on_shutdown: Callable[[], None] | None = None
) -> FastAPI:
    """``on_shutdown`` runs (in a thread) once the server has stopped taking requests."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if on_shutdown is not None:
            await run_in_threadpool(on_shutdown)

    app = EdgeApp(
        services.settings,
        lambda: services.links.origins,  # the page fetches stems from the bucket or CDN
        lifespan=lifespan,
        title="stemify",
        version=__version__,
        description=(
            "Self-hosted music stem separation with Demucs. Submit a job with a file or a "
            "link, follow it with Server-Sent Events, download the stems. "
            + (
                "Every /api/v1 route except /health and /ready needs an API key "
                "(X-API-Key or Authorization: Bearer)."
                if auth_required
                else "Authentication is off."
            )
        ),
        docs_url="/docs",
        redoc_url=None,
        responses=error_responses(),  # the one error shape, on every route
        openapi_url="/openapi.json",
    )
    app.state.services = services
    app.state.auth_required = auth_required
    app.state.event_waiters = anyio.CapacityLimiter(EVENT_WAITERS)
    app.state.rate_limiter = RateLimiter.from_settings(services.settings)
    install_error_handlers(app)
    app.include_router(routes_jobs.router, prefix=API_PREFIX)
    app.include_router(routes_downloads.router, prefix=API_PREFIX)
    app.include_router(routes_system.router, prefix=API_PREFIX)
    app.include_router(routes_usage.router, prefix=API_PREFIX)
    app.include_router(routes_metrics.router)  # /metrics, where Prometheus looks
    mount_web(app)  # the page at /
    # Security headers, trusted proxies, CORS and body limits (submissions have their own).
    install_edge(app, services.settings, uploads=[f"{API_PREFIX}/jobs", f"{API_PREFIX}/stemify"])
    # Added last, so outermost: every answer (429, 403, ...) gets a request id and is counted.
    app.add_middleware(observability.ObservabilityMiddleware, metrics=services.metrics)
    return app
