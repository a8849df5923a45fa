"""Response models of the job JSON (``stemify.jobs.render.job_to_dict``) and of /usage, so
the OpenAPI schema says what the API answers and schemathesis can hold it to that. Extra
fields are kept: the renderer, not these models, decides what a job carries."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class JobErrorOut(_Open):
    code: str
    message: str | None


class JobInputOut(_Open):
    source: str
    url: str | None
    name: str | None
    sha256: str | None
    size: int | None
    duration_s: float | None
    format: str | None


class StemOut(_Open):
    name: str
    size: int
    url: str  # signed and expiring: works without an API key


class JobOut(_Open):
    id: str
    status: str
    stage: str | None
    progress: float
    eta_s: float | None
    error: JobErrorOut | None
    model: str
    params: dict[str, Any]
    input: JobInputOut
    stems: list[StemOut]
    link: Literal["api", "s3", "cdn"] = Field(
        description=(
            "What the stems' `url`s are: `api`, this API's signed links; `s3`, presigned GETs "
            "of the objects (with the file name as Content-Disposition); `cdn`, links through "
            "the CDN (public or signed). All expire as the `api` ones do; `zip_url` is always "
            "this API's (the zip is streamed from the objects)."
        )
    )
    zip_url: str | None
    quality: dict[str, Any] | None
    stage_seconds: dict[str, float]
    cache_hit: bool
    attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    expires_at: str | None


class JobListOut(_Open):
    jobs: list[JobOut]
    next_cursor: str | None


class RateOut(BaseModel):
    limit: int | None
    remaining: int | None
    reset_in_s: float | None


class RunningOut(BaseModel):
    limit: int | None
    used: int


class AudioOut(BaseModel):
    limit: float | None
    used: float
    reset_in_s: int


class UsageOut(BaseModel):
    key_id: str | None
    submissions_per_minute: RateOut
    reads_per_minute: RateOut
    max_running_jobs: RunningOut
    daily_audio_minutes: AudioOut
