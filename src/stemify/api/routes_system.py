"""``/models``, ``/health`` (liveness) and ``/ready`` (can this instance take jobs?)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import anyio
import anyio.to_thread
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from stemify.api.auth import CallerDep, ServicesDep
from stemify.clock import now_utc
from stemify.models import list_models
from stemify.models.autopull import model_state
from stemify.services import Services

log = logging.getLogger(__name__)
router = APIRouter(tags=["system"])

CHECK_TIMEOUT_S = 5.0


@router.get("/models", summary="Models: the official catalogue and local ones")
def models(services: ServicesDep, _caller: CallerDep) -> dict[str, Any]:
    """Each model with its state: ``installed``, ``downloading`` (with ``percent``) or
    ``missing`` (with the ``reason``: not installed, or why its download failed)."""
    statuses = list_models(services.settings.model_dir)
    auto = services.auto_pull
    fetched = auto.status() if auto is not None else None
    if fetched is not None and fetched.name not in {m.name for m in statuses}:
        statuses.append(fetched)  # a model of the extra catalogue, not on disk (yet)
    loaded = set(services.models.loaded())
    return {
        "default_model": services.settings.default_model,
        "models": [
            {
                "name": m.name,
                "description": m.description,
                "sources": list(m.sources),
                "installed": m.installed,
                "size_bytes": m.size_bytes,
                "official": m.official,
                "loaded": m.name in loaded,
                **model_state(m.name, m.installed, auto).to_dict(),
            }
            for m in statuses
        ],
    }


@router.get("/health", summary="Liveness: the process answers; queue and workers if known")
async def health(services: ServicesDep) -> dict[str, Any]:
    """Always 200 while the process answers (a store outage is for /ready to report); the
    queue and workers are included when the store answers in time, else null and []."""
    queue, workers = await _queue_status(services)
    # queue_status: the name the origin document's runbook reads (`jq .queue_status`).
    return {"status": "ok", "queue": queue, "queue_status": queue, "workers": workers}


def _models_detail(services: Services) -> str:
    installed = [m.name for m in list_models(services.settings.model_dir) if m.installed]
    auto = services.auto_pull
    if auto is not None and auto.name not in installed:
        if auto.error is not None:  # the download failed: the one error, with its reason
            raise RuntimeError(auto.error)
        state = auto.state()
        if state.state == "downloading":
            # Not a failure: jobs are accepted and wait for it (stage waiting_for_model).
            done = f" ({state.percent:g} %)" if state.percent is not None else ""
            return f"downloading {auto.name}{done}, jobs wait for it" + (
                "; installed: " + ", ".join(installed) if installed else ""
            )
    if not installed:
        raise RuntimeError(
            f"no model installed: run `stemify models pull {services.settings.default_model}`"
        )
    return "installed: " + ", ".join(installed)


def _ping(ping: Callable[[], None]) -> Callable[[], str]:
    def check() -> str:
        ping()
        return "reachable"

    return check


async def _check(name: str, check: Callable[[], str]) -> dict[str, Any]:
    """Run a blocking check in a thread, abandoned after CHECK_TIMEOUT_S (a hung database or
    Redis must not hang the probe)."""
    with anyio.move_on_after(CHECK_TIMEOUT_S):
        try:
            detail = await anyio.to_thread.run_sync(check, abandon_on_cancel=True)
            return {"ok": True, "detail": detail}
        except Exception as exc:
            log.warning("readiness check %s failed: %r", name, exc)
            # /ready needs no key: the first line only, never a traceback or a whole URL.
            text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            return {"ok": False, "detail": text}
    return {"ok": False, "detail": f"no answer within {CHECK_TIMEOUT_S:g} s"}


def _queue_and_workers(services: Services) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    now = now_utc()
    stats = services.store.queue_stats(now)
    seen_after = now - timedelta(seconds=services.settings.heartbeat_timeout_s)
    workers = [
        {
            "id": w.id,
            "hostname": w.hostname,
            "pid": w.pid,
            "last_seen": w.last_seen.isoformat().replace("+00:00", "Z"),
            "last_seen_age_s": round((now - w.last_seen).total_seconds(), 1),
            "running": w.running,
            # Jobs for a model a worker lacks are handed on to one that has it.
            "models": list(w.models) if w.models is not None else None,
            "lacks_default_model": (
                None if w.models is None else services.settings.default_model not in w.models
            ),
        }
        for w in services.workers.alive(seen_after)
    ]
    queue = {
        "depth": stats.queued,
        "running": stats.running,
        "oldest_queued_age_s": (
            round(stats.oldest_queued_age_s, 1) if stats.oldest_queued_age_s is not None else None
        ),
        "workers_alive": len(workers),
    }
    return queue, workers


async def _queue_status(services: Services) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Queue and workers from the store, or (None, []) if it fails or hangs."""
    with anyio.move_on_after(CHECK_TIMEOUT_S):
        try:
            return await anyio.to_thread.run_sync(
                _queue_and_workers, services, abandon_on_cancel=True
            )
        except Exception as exc:
            # A warning, not an error: health probes every few seconds during a database
            # outage must not flood error tracking; /ready says what is wrong.
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            log.warning("reading queue statistics failed: %s", first)
            return None, []
    log.warning("reading queue statistics took over %g s", CHECK_TIMEOUT_S)
    return None, []


@router.get(
    "/ready",
    summary="Readiness: store, queue, storage and models",
    responses={503: {"description": "A check failed"}},
)
async def ready(services: ServicesDep) -> JSONResponse:
    checks = {
        "store": await _check("store", _ping(services.db.ping)),
        "queue": await _check("queue", _ping(services.queue.ping)),
        "storage": await _check("storage", services.storage.health),
        "models": await _check("models", lambda: _models_detail(services)),
    }
    queue: dict[str, Any] | None = None
    workers: list[dict[str, Any]] = []
    if checks["store"]["ok"]:
        queue, workers = await _queue_status(services)
    ok = all(check["ok"] for check in checks.values())
    # Never a failure: with workers scaled to zero (KEDA, --autoscale 0:N) the API still takes
    # jobs, which wait in the queue until a worker starts.
    checks["workers"] = {"ok": True, "detail": _workers_detail(queue, workers)}
    body = {
        "status": "ready" if ok else "not_ready",
        "checks": checks,
        "queue": queue,
        "queue_status": queue,
        "workers": workers,
    }
    return JSONResponse(body, status_code=200 if ok else 503)


def _workers_detail(queue: dict[str, Any] | None, workers: list[dict[str, Any]]) -> str:
    if queue is None:
        return "unknown (the store did not answer)"
    if not workers:
        return "no workers: jobs are accepted and wait in the queue until one starts"
    return f"{len(workers)} alive, running {sum(w['running'] for w in workers)} job(s)"
