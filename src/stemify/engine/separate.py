"""Separate one audio file into stem files: probe, normalise, stream through the model, encode.

This is the engine's whole entry point; the command line, the job workers and the benchmarks
all call :func:`separate_file` unchanged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stemify.audio import AudioInfo, ClipMode, OutputFormat, StemWriter, decode_blocks, probe
from stemify.audio.limits import DEFAULT_LIMITS, MediaLimits
from stemify.engine.backends.base import TORCH, Backend
from stemify.engine.overlap_add import Audio, InferenceOptions, stream_separate
from stemify.engine.progress import CancelToken, ProgressCallback, ProgressTracker
from stemify.errors import InvalidOptionError
from stemify.quality import QualityAccumulator, QualityReport

BLOCK_FRAMES = 65536


@dataclass(frozen=True)
class SeparationOptions:
    inference: InferenceOptions = field(default_factory=InferenceOptions)
    output: OutputFormat = field(default_factory=OutputFormat)
    clip: ClipMode = "rescale"
    stems: tuple[str, ...] | None = None  # a subset of the model's sources
    two_stems: str | None = None  # e.g. "vocals" -> vocals + no_vocals


@dataclass(frozen=True)
class SeparationResult:
    stems: dict[str, Path]
    info: AudioInfo
    quality: QualityReport
    samples: int  # per channel, at the model's rate
    samplerate: int
    stage_seconds: dict[str, float]


def output_stems(sources: list[str], options: SeparationOptions) -> list[str]:
    """The stem names a separation writes, validated against the model's sources."""
    if options.two_stems is not None and options.stems is not None:
        raise InvalidOptionError("choose either two-stem mode or a subset of stems, not both")
    wanted = [options.two_stems] if options.two_stems is not None else list(options.stems or [])
    unknown = [name for name in wanted if name not in sources]
    if unknown:
        raise InvalidOptionError(
            f"unknown stem {', '.join(unknown)}: this model has {', '.join(sources)}"
        )
    if options.two_stems is not None:
        return [options.two_stems, f"no_{options.two_stems}"]
    if options.stems is not None:
        if not options.stems:
            raise InvalidOptionError("the subset of stems is empty")
        return list(dict.fromkeys(options.stems))
    return list(sources)


@dataclass(frozen=True)
class _MixStatistics:
    samples: int
    mean: float
    std: float


def _mix_statistics(
    path: Path, model: Any, info: AudioInfo, tracker: ProgressTracker, limits: MediaLimits
) -> _MixStatistics:
    """First pass: the mean and standard deviation demucs normalises the whole track with."""
    expected = max(int(info.duration_s * model.samplerate), 1)
    samples, total, squares = 0, 0.0, 0.0
    for block in decode_blocks(
        path,
        samplerate=model.samplerate,
        channels=model.audio_channels,
        expected=info,
        limits=limits,
    ):
        mono = block.mean(axis=0, dtype=np.float64)
        total += float(mono.sum())
        squares += float(np.einsum("i,i->", mono, mono))  # not np.dot: no BLAS threads
        samples += mono.shape[0]
        tracker.report("decoding", samples / expected)
    mean = total / samples
    # Unbiased, like torch.Tensor.std; one sample has no spread.
    variance = (squares - samples * mean * mean) / (samples - 1) if samples > 1 else 0.0
    return _MixStatistics(samples, mean, math.sqrt(max(variance, 0.0)) + 1e-8)


def _normalised(blocks: Iterator[Audio], stats: _MixStatistics) -> Iterator[Audio]:
    scale = np.float32(1.0 / stats.std)
    shift = np.float32(stats.mean)
    for block in blocks:
        yield (block - shift) * scale


def separate_file(
    source: Path,
    model: Any,
    destination: Callable[[str], Path],
    options: SeparationOptions,
    *,
    on_progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    limits: MediaLimits = DEFAULT_LIMITS,
    backend: Backend = TORCH,
) -> SeparationResult:
    """Separate ``source`` with ``model`` and write each stem to ``destination(stem)``;
    ffprobe and ffmpeg run under ``limits``, the network on ``backend``.

    Either every stem file is written or none is: stems are encoded into hidden temporary files
    and renamed into place only once all of them have finished.
    """
    sources: list[str] = list(model.sources)
    names = output_stems(sources, options)
    options.output.validate()
    options.inference.validate(model)
    paths = {name: destination(name) for name in names}
    if len(set(paths.values())) != len(paths):
        raise InvalidOptionError("the file name template gives two stems the same path")

    tracker = ProgressTracker(on_progress)
    seconds: dict[str, float] = {}
    started = time.monotonic()
    info = probe(source, limits=limits)
    stats = _mix_statistics(source, model, info, tracker, limits)
    seconds["decoding"] = time.monotonic() - started

    writers: dict[str, StemWriter] = {}
    try:
        for name, path in paths.items():
            writers[name] = StemWriter(
                path,
                samplerate=model.samplerate,
                channels=model.audio_channels,
                fmt=options.output,
                clip=options.clip,
            )
        started = time.monotonic()
        quality = _separate_into(
            source, model, stats, writers, options, tracker, cancel, limits, backend
        )
        seconds["separating"] = time.monotonic() - started

        started = time.monotonic()
        for writer in writers.values():
            writer.finish()
        written = {name: writer.commit() for name, writer in writers.items()}
        seconds["encoding"] = time.monotonic() - started
        tracker.report("encoding", 1.0)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    return SeparationResult(
        stems=written,
        info=info,
        quality=quality,
        samples=stats.samples,
        samplerate=model.samplerate,
        stage_seconds=seconds,
    )


def _separate_into(
    source: Path,
    model: Any,
    stats: _MixStatistics,
    writers: dict[str, StemWriter],
    options: SeparationOptions,
    tracker: ProgressTracker,
    cancel: CancelToken | None,
    limits: MediaLimits,
    backend: Backend,
) -> QualityReport:
    sources: list[str] = list(model.sources)

    def on_segments(done: int, total: int) -> None:
        tracker.report("separating", done / total)

    quality = QualityAccumulator(sources, model.samplerate)
    blocks = decode_blocks(
        source,
        samplerate=model.samplerate,
        channels=model.audio_channels,
        block_frames=BLOCK_FRAMES,
        limits=limits,
    )
    scale, shift = np.float32(stats.std), np.float32(stats.mean)
    try:
        for mix, estimate in stream_separate(
            model,
            _normalised(blocks, stats),
            stats.samples,
            options.inference,
            on_segments=on_segments,
            cancel=cancel,
            backend=backend,
        ):
            mix = mix * scale + shift
            estimate = estimate * scale + shift
            quality.update(mix, estimate)
            for name, writer in writers.items():
                writer.write(_stem_block(name, sources, estimate, options.two_stems))
    finally:
        blocks.close()
    return quality.report()


def _stem_block(name: str, sources: list[str], estimate: Audio, two_stems: str | None) -> Audio:
    if two_stems is not None and name == f"no_{two_stems}":
        # As demucs --two-stems: the sum of the other sources, not mix minus the stem.
        others = [i for i, source in enumerate(sources) if source != two_stems]
        out: Audio = estimate[others].sum(axis=0)
        return out
    stem: Audio = estimate[sources.index(name)]
    return stem
