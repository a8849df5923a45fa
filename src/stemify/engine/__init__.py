"""The separation engine: streaming Demucs inference from an audio file to stem files."""

from stemify.engine.overlap_add import InferenceOptions, stream_separate
from stemify.engine.progress import CancelToken, Progress, ProgressCallback
from stemify.engine.separate import (
    SeparationOptions,
    SeparationResult,
    output_stems,
    separate_file,
)

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
