"""Load an installed model from a model directory, strictly offline.

``demucs.pretrained.get_model`` falls back to the network (HuggingFace, then demucs' release
host) and calls ``sys.exit`` through ``fatal()`` on some errors. We check everything it would
look for is on disk first, always pass ``repo=``, and turn every failure into a typed error.

demucs (and with it torch) is imported by :func:`load_model` only: the rest of this module, and
whoever imports it to check or list models, starts without them.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

from stemify.errors import ModelLoadError, ModelNotFoundError
from stemify.models.catalogue import local_signatures, official_catalogue, read_bag_signatures

# diffq restores quantized states (mdx_q, mdx_extra_q). The package that provides it on
# Python 3.11 is diffq-fixed (pinned in requirements.lock); the import name is still diffq.
_DIFFQ_HINT = "pip install diffq-fixed, as pinned in requirements.lock"

# Names become file names; anything else (paths, `hf://...`) could leave the directory or make
# demucs reach for the network.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _pull_hint(name: str) -> str:
    return f"run `stemify models pull {name}`"


def _not_found(name: str, model_dir: Path, detail: str = "") -> ModelNotFoundError:
    if name in official_catalogue():
        suffix = f" ({detail})" if detail else ""
        return ModelNotFoundError(
            f"model '{name}' is not installed in {model_dir}{suffix}: {_pull_hint(name)}"
        )
    if detail:
        return ModelNotFoundError(f"model '{name}' in {model_dir} is incomplete: {detail}")
    return ModelNotFoundError(
        f"unknown model '{name}': not an official model and not found in {model_dir}"
    )


def _corrupt(name: str, model_dir: Path, detail: str) -> ModelLoadError:
    fix = f": {_pull_hint(name)} again" if name in official_catalogue() else ""
    return ModelLoadError(f"model '{name}' in {model_dir} is corrupt ({detail}){fix}")


def check_installed(name: str, model_dir: Path) -> list[Path]:
    """The weight files ``name`` needs, all present; raises ModelNotFoundError otherwise.

    Mirrors demucs' lookup order: a bare signature wins over a bag of the same name."""
    if not _NAME.fullmatch(name):
        raise ModelNotFoundError(f"invalid model name {name!r}")
    if not model_dir.is_dir():
        raise _not_found(name, model_dir)
    on_disk = local_signatures(model_dir)
    if name in on_disk:
        return on_disk[name]
    bag_path = model_dir / f"{name}.yaml"
    if not bag_path.is_file():
        raise _not_found(name, model_dir)
    try:
        signatures = read_bag_signatures(bag_path)
    except ValueError as exc:
        raise _corrupt(name, model_dir, str(exc)) from exc
    missing = [sig for sig in signatures if sig not in on_disk]
    if missing:
        raise _not_found(name, model_dir, f"missing weights {', '.join(missing)}")
    return [on_disk[sig][0] for sig in signatures]


def load_model(name: str, model_dir: Path) -> Any:
    """The demucs model (a ``BagOfModels`` for bags) in eval mode. Never touches the network."""
    entry = official_catalogue().get(name)
    if entry is not None and entry.needs_diffq and importlib.util.find_spec("diffq") is None:
        raise ModelLoadError(
            f"model '{name}' is quantized and requires diffq, which is not installed "
            f"({_DIFFQ_HINT})"
        )
    check_installed(name, model_dir)
    from demucs.pretrained import get_model
    from demucs.repo import ModelLoadingError

    try:
        return get_model(name, repo=model_dir)
    except ModelLoadingError as exc:
        # Checksum mismatch against the file name, or duplicate files for one signature.
        raise _corrupt(name, model_dir, str(exc)) from exc
    except ImportError as exc:
        raise ModelLoadError(f"model '{name}' needs a missing package: {exc}") from exc
    except SystemExit as exc:
        # demucs' fatal(): in practice a quantized checkpoint without diffq installed (demucs
        # turns the ImportError of unpickling diffq's quantizer class into fatal() too).
        raise ModelLoadError(
            f"model '{name}' could not be loaded; demucs gave up (it requires diffq if the "
            f"model is quantized: {_DIFFQ_HINT}) [exit {exc.code}]"
        ) from exc
    except Exception as exc:
        # Truncated or overwritten pickles fail in many ways (zip, unpickling, state keys).
        raise _corrupt(name, model_dir, f"{type(exc).__name__}: {exc}") from exc


def model_sources(model: Any) -> list[str]:
    return [str(s) for s in model.sources]


def model_samplerate(model: Any) -> int:
    return int(model.samplerate)


def model_channels(model: Any) -> int:
    return int(model.audio_channels)
