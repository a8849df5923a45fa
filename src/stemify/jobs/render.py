"""The one JSON shape of a job, shared by the API, SSE events and webhooks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from stemify.jobs.links import DownloadLinks
from stemify.jobs.model import Job, StemFile


def _time(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def job_to_dict(
    job: Job,
    base_url: str = "/api/v1",
    links: DownloadLinks | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """``base_url`` prefixes the API's download links (absolute in webhooks, relative in the
    API); with ``links`` they are signed and expire, so they work without an API key, and the
    stems' may point straight at the objects (``link`` says which kind they are)."""
    moment = now or datetime.now(UTC)

    def api_link(path: str, stem: str | None) -> str:
        url = f"{base_url}/jobs/{job.id}/{path}"
        return url if links is None else f"{url}?{links.api_query(job, stem, moment)}"

    def stem_link(stem: StemFile) -> str:
        direct = links.direct_url(job, stem, moment) if links is not None else None
        return direct or api_link(f"stems/{quote(stem.name, safe='')}", stem.name)

    stems = [
        {"name": stem.name, "size": stem.size, "url": stem_link(stem)}
        for stem in job.stems.values()
    ]
    return {
        "id": job.id,
        "status": job.status.value,
        "stage": job.stage.value if job.stage else None,
        "progress": round(job.progress, 1),
        "eta_s": round(job.eta_s, 1) if job.eta_s is not None else None,
        "error": (
            {"code": job.error_code, "message": job.error_message} if job.error_code else None
        ),
        "model": job.spec.model,
        "params": job.spec.to_dict(),
        "input": {
            "source": job.source,
            "url": job.source_url,
            "name": job.input_name,
            "sha256": job.input_sha256,
            "size": job.input_size,
            "duration_s": job.input_duration_s,
            "format": job.input_format,
        },
        "stems": stems,
        "link": links.kind if links is not None else "api",
        "zip_url": api_link("stems.zip", None) if stems else None,
        "quality": job.quality,
        "stage_seconds": {k: round(v, 3) for k, v in job.stage_seconds.items()},
        "cache_hit": job.cache_hit,
        "attempts": job.attempts,
        "created_at": _time(job.created_at),
        "started_at": _time(job.started_at),
        "finished_at": _time(job.finished_at),
        "expires_at": _time(job.expires_at),
    }
