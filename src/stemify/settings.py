"""Settings, read once from ``STEMIFY_`` environment variables and passed down explicitly."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import platformdirs
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from stemify.egress.urlguard import normal_domain

# demucs.pretrained.ROOT_URL, written out so that reading settings does not import torch.
DEMUCS_ROOT_URL = "https://dl.fbaipublicfiles.com/demucs/"
# Settings that were renamed: set under the old name they would be ignored in silence.
RENAMED = {
    "STEMIFY_RATE_SUBMIT_PER_MINUTE": "STEMIFY_SUBMISSIONS_PER_MINUTE",
    "STEMIFY_RATE_READ_PER_MINUTE": "STEMIFY_READS_PER_MINUTE",
}


def _default_model_dir() -> Path:
    return platformdirs.user_cache_path("stemify") / "models"


def _default_export_dir() -> Path:
    return platformdirs.user_cache_path("stemify") / "exports"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STEMIFY_", extra="ignore")

    # ---- engine and models
    model_dir: Path = Field(default_factory=_default_model_dir)
    # Where `stemify models pull` downloads official weights from; demucs' own release host.
    model_base_url: str = DEMUCS_ROOT_URL
    # Embedded `stemify serve` downloads the default model at start when it is missing; off
    # where models are baked into the image (containers).
    auto_pull: bool = True
    # A YAML file of extra downloadable models (a private mirror's), beside the official ones.
    model_catalogue: Path | None = None
    device: str = "cpu"
    # LRU budget for loaded models kept in memory by one process.
    model_cache_mb: int = 4096
    # Segments stacked into one forward pass.
    batch_size: int = 1
    # What runs the network: auto (onnxruntime for HTDemucs models, verified; torch for the
    # rest), torch, or onnx (an error for a model onnxruntime cannot take).
    backend: Literal["auto", "torch", "onnx"] = "auto"
    # Where exports go when the model directory is read-only (an image's baked-in models).
    export_dir: Path = Field(default_factory=_default_export_dir)

    # ---- service: where things live
    data_dir: Path = Path("data")
    database_url: SecretStr | None = None  # default: SQLite in data_dir
    redis_url: SecretStr | None = None  # unset: embedded mode (no queue server)
    storage_url: str | None = None  # default: data_dir/storage
    # How long a request waits to connect to PostgreSQL or for a pooled connection before it
    # is answered 503 (database_unavailable).
    database_timeout_s: float = Field(default=5.0, gt=0)
    # s3://BUCKET/PREFIX storage: endpoint, region and credentials come from boto3's own
    # configuration (AWS_ENDPOINT_URL_S3, AWS_REGION, AWS_ACCESS_KEY_ID, ~/.aws/config, roles);
    # this is what boto3 has no variable for. auto: boto3's choice (or its config file's).
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    # With S3: the API's stem routes redirect to a presigned URL (redirect), or pass the bytes
    # through for buckets that clients cannot reach (proxy; the job's links are then the API's).
    # Local storage always serves the file.
    download_mode: Literal["redirect", "proxy"] = "redirect"
    # A CDN in front of the bucket: stem links are this base + the object's key. With a key
    # pair id and its RSA private key (PEM) they are CloudFront-style signed links.
    cdn_base_url: str | None = None
    cdn_key_id: str | None = None
    cdn_private_key_file: Path | None = None
    # botocore waits 60 s for a connection: an S3 outage would hang uploads and /ready that
    # long per attempt. Retries are boto3's (AWS_MAX_ATTEMPTS, AWS_RETRY_MODE; standard: 3).
    s3_connect_timeout_s: float = Field(default=5.0, gt=0)
    s3_read_timeout_s: float = Field(default=60.0, gt=0)
    redis_prefix: str = "stemify"
    # A passwordless Redis on another machine is refused unless this says the network is trusted.
    allow_insecure_redis: bool = False

    # ---- observability: logs, metrics, error tracking (docs/operations/runbook.md)
    log_format: Literal["auto", "json", "console"] = "auto"  # auto: console on a terminal
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Shared by `serve` and the `stemify worker` processes of one machine, so /metrics adds them
    # up. Default: data_dir/metrics.
    metrics_dir: Path | None = None
    # A worker on another machine than the API serves its own /metrics on this port (0: off).
    worker_metrics_port: int = 0
    # ... on this address (all of them, for a scraper or a container probe from outside).
    worker_metrics_host: str = "0.0.0.0"
    sentry_dsn: SecretStr | None = None  # unset: error tracking off
    sentry_environment: str = "production"
    sentry_traces_sample_rate: float = Field(default=0.0, ge=0.0, le=1.0)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    # ---- service: limits and behaviour
    auth: Literal["required", "off"] | None = None  # None: off only for `serve` on loopback
    max_upload_mb: int = 500
    # An upload that sends no byte for this long is cut off (408 upload_timeout) and removed.
    upload_idle_timeout_s: float = Field(default=60.0, gt=0)
    # ... and one that sends less than this, measured over each idle-timeout window (a trickle
    # of a byte now and then); 0: no minimum. 4 KiB/s is a 500 MB upload in 36 hours.
    upload_min_rate_kib_s: int = Field(default=4, ge=0)
    max_duration_s: float = 7200.0

    # ---- web page (stemify.web)
    # Memory the page's player may take for decoded stems (float32 stereo at 48 kHz, 23 MB per
    # stem-minute); a larger result gets download links only. 1024: 4 stems of 11 minutes.
    web_player_max_mb: int = Field(default=1024, ge=0)

    # ---- links and hostile media (stemify.egress.urlguard, stemify.audio.limits)
    # Domains links may point to (a domain allows its subdomains); empty: any public host.
    url_allowlist: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Every ffprobe/ffmpeg run: address-space limit, CPU seconds, ffprobe wall time, and how
    # long a decoding ffmpeg may go without producing audio.
    ffmpeg_memory_mb: int = Field(default=1024, ge=256)
    ffmpeg_cpu_s: int = Field(default=3600, ge=1)
    ffprobe_timeout_s: float = Field(default=30.0, gt=0)
    ffmpeg_stall_s: float = Field(default=120.0, gt=0)
    # Inputs outside these are refused (64 channels, 1 Hz, 768 kHz: hostile, not music).
    max_channels: int = Field(default=16, ge=1)
    min_samplerate: int = Field(default=8000, ge=1)
    max_samplerate: int = Field(default=384000, ge=1)

    @field_validator("url_allowlist", mode="after")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        # Checked here, so a bad entry stops the service at start, not every submission.
        return [domain for domain in map(normal_domain, value) if domain]

    default_model: str = "htdemucs"
    result_ttl_hours: float = 24.0
    preload_models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    worker_concurrency: int = 1
    job_timeout_s: float = 4 * 3600.0
    heartbeat_interval_s: float = 2.0
    heartbeat_timeout_s: float = 30.0
    # A job whose worker stopped beating this many times is failed (worker_lost), so an input
    # that kills workers (out of memory, a decoder crash) does not take down one after another.
    max_attempts: int = Field(default=3, ge=1)
    reconcile_interval_s: float = 15.0
    requeue_after_s: float = 30.0
    sweep_interval_s: float = 300.0
    # Temp files of storage writes untouched this long belong to a crashed writer: removed by
    # the maintenance loop. Must exceed the longest pause of a live upload (it writes each MB).
    temp_max_age_s: float = Field(default=3600.0, gt=0)
    shutdown_grace_s: float = 30.0
    # `stemify worker --autoscale MIN:MAX` (docs/operations/autoscaling.md): children are added
    # at once when jobs wait beyond their slots by more than autoscale_up_backlog (or one has
    # waited autoscale_up_wait_s), at most autoscale_max_step per tick; idle children go only
    # autoscale_cooldown_s after the last arrival, keeping autoscale_down_spare free slots.
    autoscale_cooldown_s: float = Field(default=120.0, ge=0)
    autoscale_up_backlog: int = Field(default=0, ge=0)
    autoscale_up_wait_s: float = Field(default=60.0, ge=0)
    autoscale_down_spare: int = Field(default=0, ge=0)
    autoscale_tick_s: float = Field(default=2.0, gt=0)
    autoscale_max_step: int = Field(default=2, ge=1)
    # A child that exits within autoscale_stable_s of its start is restarted after a delay that
    # doubles from autoscale_backoff_s with each such crash, up to 64 times that.
    autoscale_backoff_s: float = Field(default=1.0, gt=0)
    autoscale_stable_s: float = Field(default=60.0, gt=0)
    download_timeout_s: float = 300.0
    download_retries: int = 3
    webhook_attempts: int = 5
    # Signs webhooks; in embedded mode a random one is kept in data_dir when unset.
    secret_key: SecretStr | None = None
    # Public address of the API, for absolute links in webhooks (e.g. https://stems.example.com).
    public_url: str | None = None
    # Tests serve links from 127.0.0.1; never enable this in production.
    allow_loopback_urls: bool = False

    # ---- abuse limits, signed links and the HTTP edge (see docs/security.md)
    # Per API key; a key's own value (`stemify keys create/update`) wins. 0 turns a limit off.
    # The same names as the `stemify keys` flags, the key table and the /usage JSON.
    submissions_per_minute: int = Field(default=30, ge=0)
    reads_per_minute: int = Field(default=600, ge=0)
    max_running_jobs: int = Field(default=10, ge=0)
    daily_audio_minutes: float = Field(default=1440.0, ge=0)
    # With auth off, limit each client address too (off: auth-off is one local user).
    limit_anonymous: bool = False
    # A job read for a status poll is answered from memory this long (0: every poll reads the
    # store); this process's own changes show at once, other processes' within this time.
    job_cache_s: float = Field(default=0.5, ge=0, le=10)
    # Lifetime of signed stem and zip links (never beyond the job's own expiry).
    signed_url_ttl_s: float = 6 * 3600.0
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Addresses of reverse proxies whose X-Forwarded-For/-Proto are believed ("*": any).
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_kb: int = 64  # every route but job submission, which has max_upload_mb
    hsts_max_age_s: int = 63072000

    @field_validator(
        "preload_models", "cors_origins", "trusted_proxies", "url_allowlist", mode="before"
    )
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @model_validator(mode="before")
    @classmethod
    def _no_old_names(cls, values: object) -> object:
        for old, new in RENAMED.items():
            if old in os.environ:
                raise ValueError(f"{old} was renamed: set {new} instead")
        return values

    @property
    def database(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{(self.data_dir / 'stemify.db').resolve()}"

    @property
    def storage(self) -> str:
        return self.storage_url or str((self.data_dir / "storage").resolve())

    @property
    def distributed(self) -> bool:
        return self.redis_url is not None
