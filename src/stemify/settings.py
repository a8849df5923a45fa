"""Settings, read once from ``STEMIFY_`` environment variables and passed down explicitly."""

from __future__ import annotations

from pathlib import Path

import platformdirs
from demucs.pretrained import ROOT_URL
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_model_dir() -> Path:
    return platformdirs.user_cache_path("stemify") / "models"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STEMIFY_", extra="ignore")

    model_dir: Path = Field(default_factory=_default_model_dir)
    # Where `stemify models pull` downloads official weights from; demucs' own release host.
    model_base_url: str = ROOT_URL
    device: str = "cpu"
    # LRU budget for loaded models kept in memory by one process.
    model_cache_mb: int = 4096
    # Segments stacked into one forward pass.
    batch_size: int = 1
