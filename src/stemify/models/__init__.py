"""Official model catalogue, offline loading, verified downloads and an in-memory LRU cache."""

from stemify.models.cache import CacheStats, ModelCache, model_nbytes
from stemify.models.catalogue import (
    CatalogueEntry,
    ModelFile,
    ModelStatus,
    list_models,
    local_models,
    official_catalogue,
)
from stemify.models.loading import (
    check_installed,
    load_model,
    model_channels,
    model_samplerate,
    model_sources,
)
from stemify.models.pull import VerifyResult, pull, pull_model, verify_models

__all__ = [
    "CacheStats",
    "CatalogueEntry",
    "ModelCache",
    "ModelFile",
    "ModelStatus",
    "VerifyResult",
    "check_installed",
    "list_models",
    "load_model",
    "local_models",
    "model_channels",
    "model_nbytes",
    "model_samplerate",
    "model_sources",
    "official_catalogue",
    "pull",
    "pull_model",
    "verify_models",
]
