"""The separation engine: streaming Demucs inference from an audio file to stem files.

The names below are imported on first use (PEP 562): the engine's modules import torch and
demucs, and importing this package, or a light part of it such as ``stemify.engine.params``
(the command line's option defaults), must not.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stemify.engine.overlap_add import InferenceOptions, stream_separate
    from stemify.engine.progress import CancelToken, Progress, ProgressCallback
    from stemify.engine.separate import (
        SeparationOptions,
        SeparationResult,
        output_stems,
        separate_file,
    )

_HOMES = {
    "CancelToken": "stemify.engine.progress",
    "InferenceOptions": "stemify.engine.overlap_add",
    "Progress": "stemify.engine.progress",
    "ProgressCallback": "stemify.engine.progress",
    "SeparationOptions": "stemify.engine.separate",
    "SeparationResult": "stemify.engine.separate",
    "output_stems": "stemify.engine.separate",
    "separate_file": "stemify.engine.separate",
    "stream_separate": "stemify.engine.overlap_add",
}

__all__ = [
    "CancelToken",
    "InferenceOptions",
    "Progress",
    "ProgressCallback",
    "SeparationOptions",
    "SeparationResult",
    "output_stems",
    "separate_file",
    "stream_separate",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once: later look-ups do not come back here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
