"""The job record: what was asked, where it stands, what it produced."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from stemify.engine.params import SeparationParams

if TYPE_CHECKING:
    from stemify.engine import SeparationOptions


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"

    @property
    def finished(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


class Stage(StrEnum):
    WAITING_FOR_MODEL = "waiting_for_model"  # queued: the model is still being downloaded
    DOWNLOADING = "downloading"
    DECODING = "decoding"
    SEPARATING = "separating"
    ENCODING = "encoding"
    STORING = "storing"


class JobSpec(SeparationParams):
    """The separation parameters of a job; with the input's sha256 they decide dedup hits."""

    model: str = Field(default="htdemucs", description="Default: the server's default model.")

    def params_hash(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        return cls.model_validate(data)

    def separation_options(self, *, device: str, batch_size: int) -> SeparationOptions:
        # The engine (torch) loads here, not with the job record: the store and the
        # operators' commands must not start torch.
        from stemify.engine import InferenceOptions, SeparationOptions

        return SeparationOptions(
            inference=InferenceOptions(
                shifts=self.shifts, overlap=self.overlap, device=device, batch_size=batch_size
            ),
            output=self.output(),
            stems=self.stems,
            two_stems=self.two_stems,
        )


@dataclass(frozen=True)
class StemFile:
    name: str
    key: str  # storage key
    size: int


@dataclass
class Job:
    id: str
    spec: JobSpec
    source: Literal["upload", "url"]
    created_at: datetime
    owner: str | None = None  # API key id; None when auth is off
    status: JobStatus = JobStatus.QUEUED
    stage: Stage | None = None
    progress: float = 0.0  # 0..100
    eta_s: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    source_url: str | None = None
    input_name: str | None = None  # display only, sanitised; never a file name
    input_key: str | None = None
    input_sha256: str | None = None
    input_size: int | None = None
    input_duration_s: float | None = None
    input_format: str | None = None
    cache_hit: bool = False
    stems: dict[str, StemFile] = field(default_factory=dict)
    quality: dict[str, Any] | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    webhook_url: str | None = None
    idempotency_key: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = None
    heartbeat_at: datetime | None = None
    worker_id: str | None = None
    attempts: int = 0
    worker_losses: int = 0  # times its worker stopped beating while running it
    cancel_requested: bool = False
