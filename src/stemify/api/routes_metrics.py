"""``/metrics``: the Prometheus text of the API and every worker process on this machine, plus
the gauges read from the store at scrape time (queue, running jobs, workers, storage)."""

from __future__ import annotations

import logging
from datetime import timedelta

from fastapi import APIRouter
from fastapi.responses import Response

from stemify.api.auth import ServicesDep
from stemify.clock import now_utc
from stemify.observability.metrics import CONTENT_TYPE, StoreCollector, StoreSnapshot, exposition
from stemify.services import Services

log = logging.getLogger(__name__)
router = APIRouter(tags=["system"])


def store_snapshot(services: Services) -> StoreSnapshot:
    now = now_utc()
    stats = services.store.queue_stats(now)
    seen_after = now - timedelta(seconds=services.settings.heartbeat_timeout_s)
    workers = len(services.workers.alive(seen_after))
    # A clean stop (SIGTERM, the autoscaler's scale-down) is not a loss: it marks its row.
    lost = services.workers.lost(seen_after, now - timedelta(hours=1))
    usage = services.storage.usage()
    return StoreSnapshot(
        queued=stats.queued,
        running=stats.running,
        oldest_queued_age_s=stats.oldest_queued_age_s,
        workers=workers,
        free_bytes=usage[0] if usage else None,
        total_bytes=usage[1] if usage else None,
        lost_workers=lost,
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics of the API and every worker process on this machine",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
def metrics(services: ServicesDep) -> Response:
    try:
        body = exposition(services.metrics, StoreCollector(lambda: store_snapshot(services)))
    except Exception:
        # The store is down: still answer with the process metrics, which say so indirectly
        # (and /ready says why).
        log.warning("store gauges unavailable for /metrics", exc_info=True)
        body = exposition(services.metrics)
    return Response(content=body, media_type=CONTENT_TYPE)
