"""Which backend a model runs on, and the model loaded with it (``STEMIFY_BACKEND``).

``auto`` runs HTDemucs-family models on onnxruntime when their exported core is found or made,
and verified; everything else (HDemucs, Demucs v2-v3, quantized models, a GPU device) runs on
torch. ``onnx`` forced on a model it cannot take is an error naming the model; ``torch`` is
today's engine. An export that fails its check, or that has nowhere to be written, leaves the
model on torch with one warning.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from demucs.apply import BagOfModels
from demucs.htdemucs import HTDemucs

from stemify.engine.backends.base import TORCH, Backend
from stemify.engine.backends.onnx_export import (
    agreement_db,
    export_core,
    export_name,
    valid_export,
)
from stemify.engine.backends.onnx_runtime import OnnxBackend, open_session, session_core
from stemify.errors import BackendUnavailableError
from stemify.models.cache import model_nbytes
from stemify.models.loading import check_installed, load_model
from stemify.models.pull import sha256_file

log = logging.getLogger(__name__)

BackendChoice = Literal["auto", "torch", "onnx"]
# Below this the export is not the model any more (the bar; good exports reach 85+).
MIN_AGREEMENT_DB = 60.0


@dataclass(frozen=True)
class LoadedModel:
    """A demucs model and the backend its segments run on; what the model cache holds."""

    name: str
    model: Any
    backend: Backend

    def memory_bytes(self) -> int:
        return model_nbytes(self.model) + self.backend.memory_bytes()


@dataclass(frozen=True)
class ExportPlaces:
    """Where exports are looked for and written: the model directory, else a writable cache."""

    model_dir: Path
    cache_dir: Path


def sub_models(model: Any) -> list[Any]:
    return list(model.models) if isinstance(model, BagOfModels) else [model]


def is_quantized(checkpoint: Path) -> bool:
    """Whether a demucs checkpoint holds a diffq-quantized state (read without its weights)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        package = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
    return bool(package.get("state", {}).get("__quantized"))


def runtime_refusal(model: Any, checkpoints: list[Path]) -> str | None:
    """Why the runtime cannot take ``model``, or None if it can."""
    for sub in sub_models(model):
        if not isinstance(sub, HTDemucs):
            return f"its {type(sub).__name__} architecture is not HTDemucs"
        if not sub.use_train_segment:
            return "it is an HTDemucs trained without a fixed segment"
    if any(is_quantized(path) for path in set(checkpoints)):
        return "it is quantized (diffq)"
    return None


def load_engine_model(
    name: str,
    model_dir: Path,
    *,
    backend: BackendChoice = "auto",
    device: str = "cpu",
    export_dir: Path | None = None,
    min_agreement_db: float = MIN_AGREEMENT_DB,
) -> LoadedModel:
    """``load_model`` and the backend ``backend`` chooses for it; never the network.

    A fresh export agreeing with PyTorch below ``min_agreement_db`` is discarded."""
    model = load_model(name, model_dir)
    if backend == "torch":
        return LoadedModel(name, model, TORCH)
    if device != "cpu":
        if backend == "onnx":
            raise BackendUnavailableError(
                f"the onnx backend runs on the CPU; device {device} runs on torch "
                "(--backend torch or STEMIFY_BACKEND=auto)"
            )
        return LoadedModel(name, model, TORCH)
    checkpoints = check_installed(name, model_dir)
    reason = runtime_refusal(model, checkpoints)
    if reason is None and importlib.util.find_spec("onnxruntime") is None:
        reason = "onnxruntime is not installed (pip install -r requirements.lock)"
    if reason is not None:
        if backend == "onnx":
            raise BackendUnavailableError(
                f"model '{name}' cannot run on the onnx backend: {reason}; "
                "run it with --backend torch (or STEMIFY_BACKEND=auto)"
            )
        log.info("model %s runs on torch: %s", name, reason)
        return LoadedModel(name, model, TORCH)
    places = ExportPlaces(model_dir, export_dir or model_dir)
    sessions = []
    for sub, checkpoint in zip(sub_models(model), checkpoints, strict=True):
        try:
            session = verified_session(name, sub, checkpoint, places, min_agreement_db)
        except Exception as exc:  # onnxruntime's and the exporter's errors have no common base
            problem = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
            if backend == "onnx":
                raise BackendUnavailableError(
                    f"model '{name}' cannot run on the onnx backend: {problem}"
                ) from exc
            log.warning("model %s runs on torch: its onnx export failed (%s)", name, problem)
            session = None
        if session is None:
            return LoadedModel(name, model, TORCH)
        sessions.append(session)
    log.debug("model %s runs on onnxruntime (%d part(s))", name, len(sessions))
    return LoadedModel(name, model, OnnxBackend(sessions))


def _existing(name: str, file_name: str, places: ExportPlaces) -> Path | None:
    for directory in dict.fromkeys((places.model_dir, places.cache_dir)):
        path = directory / file_name
        if not path.exists():
            continue
        if valid_export(path):
            return path
        # Replaced by the rebuilt export (or, in a read-only directory, left for the cache's).
        log.warning("the export %s of model %s is corrupt: rebuilding it", path, name)
    return None


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def _target(name: str, file_name: str, places: ExportPlaces) -> Path | None:
    if _writable(places.model_dir):
        return places.model_dir / file_name
    if places.cache_dir != places.model_dir and _writable(places.cache_dir):
        log.warning(
            "model directory %s is not writable: the export of model %s goes to %s "
            "(STEMIFY_EXPORT_DIR)",
            places.model_dir,
            name,
            places.cache_dir,
        )
        return places.cache_dir / file_name
    log.warning(
        "model %s runs on torch: neither the model directory %s nor the export cache %s is "
        "writable for its onnx export (set STEMIFY_EXPORT_DIR, or run `stemify models export`)",
        name,
        places.model_dir,
        places.cache_dir,
    )
    return None


def verified_session(
    name: str, sub: Any, checkpoint: Path, places: ExportPlaces, min_agreement_db: float
) -> tuple[Any, Any, int] | None:
    """(sub-model, session, export bytes) for one part of ``name``, exporting it first if no
    valid export exists; None (after one warning) if the model must run on torch."""
    file_name = export_name(sha256_file(checkpoint))
    threads = torch.get_num_threads()
    path = _existing(name, file_name, places)
    if path is not None:
        return sub, open_session(path, threads), path.stat().st_size
    path = _target(name, file_name, places)
    if path is None:
        return None
    log.info("exporting the network core of model %s to %s (once per checkpoint)", name, path)
    pending = export_core(sub, path)
    try:
        session = open_session(pending.temp, threads)  # read whole: the rename does not matter
        db = agreement_db(sub, session_core(session))
        if db >= min_agreement_db:
            pending.install()
    finally:
        pending.drop()
    if db < min_agreement_db:
        log.warning(
            "model %s runs on torch: its onnx export agrees with PyTorch to %.1f dB only "
            "(at least %.0f needed); the export was discarded",
            name,
            db,
            min_agreement_db,
        )
        return None
    size = path.stat().st_size
    log.info(
        "exported model %s in %.1f s (%.0f MB), agreement with PyTorch %.1f dB",
        name,
        pending.seconds,
        size / 1e6,
        db,
    )
    return sub, session, size
