"""A mix of stems at per-stem gains, streamed: every stem decoded block by block in step, summed,
encoded through one :class:`~stemify.audio.encode.StemWriter` (never a partial file).

Stems are the audio files of one directory named ``<stem>.<ext>`` (as ``separate`` and the
service write them). They must share one sample rate and one length: the mix of a 44.1 kHz
vocals and a 48 kHz drums, or of stems of two songs, is a mistake to report, not to resample.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, closing
from pathlib import Path

import numpy as np
import numpy.typing as npt

from stemify.audio.decode import decode_blocks
from stemify.audio.encode import ClipMode, OutputFormat, StemWriter
from stemify.audio.probe import AudioInfo, probe
from stemify.audio.stem_files import stem_files
from stemify.errors import InvalidAudioError, InvalidOptionError

BLOCK_FRAMES = 65536


def find_stems(directory: Path, exclude: Path | None = None) -> dict[str, Path]:
    """The stems to mix (``exclude``: the output, which may be written beside them)."""
    return stem_files(directory, "stem", exclude)


def parse_gains(values: tuple[str, ...] | list[str], stems: Mapping[str, Path]) -> dict[str, float]:
    """``["vocals=0", "drums=0.5"]`` → gains of every stem (1 where not given)."""
    gains = dict.fromkeys(stems, 1.0)
    for value in values:
        name, sep, number = value.partition("=")
        name = name.strip()
        if not sep or not name:
            raise InvalidOptionError(f"--gain {value!r}: write STEM=GAIN, e.g. vocals=0")
        if name not in stems:
            raise InvalidOptionError(
                f"--gain {value!r}: no stem {name!r} here; the stems are {', '.join(stems)}"
            )
        try:
            gain = float(number)
        except ValueError:
            raise InvalidOptionError(f"--gain {value!r}: {number!r} is not a number") from None
        if not math.isfinite(gain) or gain < 0:
            raise InvalidOptionError(f"--gain {value!r}: a gain is a number from 0 up (1: as is)")
        gains[name] = gain
    return gains


def _common_format(infos: Mapping[str, AudioInfo]) -> tuple[int, int]:
    rates = {name: info.samplerate for name, info in infos.items()}
    if len(set(rates.values())) > 1:
        listed = ", ".join(f"{name} {rate} Hz" for name, rate in rates.items())
        raise InvalidAudioError(f"the stems have different sample rates ({listed}): not one song")
    return next(iter(rates.values())), max(info.channels for info in infos.values())


def _in_step(streams: Mapping[str, Iterator[npt.NDArray[np.float32]]]) -> Iterator[
    dict[str, npt.NDArray[np.float32]]
]:  # fmt: skip
    """One block of every stem at a time; InvalidAudioError when one ends before the others."""
    frames = dict.fromkeys(streams, 0)
    while True:
        blocks = {name: next(stream, None) for name, stream in streams.items()}
        ended = [name for name, block in blocks.items() if block is None]
        if len(ended) == len(blocks):
            return
        for name, block in blocks.items():
            frames[name] += 0 if block is None else block.shape[1]
        lengths = {block.shape[1] for block in blocks.values() if block is not None}
        if ended or len(lengths) > 1:
            for stream_name, stream in streams.items():  # read the rest, to name the lengths
                frames[stream_name] += sum(b.shape[1] for b in stream)
            listed = ", ".join(f"{name} {count} samples" for name, count in frames.items())
            raise InvalidAudioError(f"the stems differ in length ({listed}): not one song")
        yield {name: block for name, block in blocks.items() if block is not None}


def mix_stems(
    stems: Mapping[str, Path],
    gains: Mapping[str, float],
    out: Path,
    *,
    fmt: OutputFormat | None = None,
    clip: ClipMode = "rescale",
) -> Path:
    """Write the sum of ``stems`` at ``gains`` to ``out``; returns ``out``."""
    if not stems:
        raise InvalidOptionError("no stems to mix")
    infos = {name: probe(path) for name, path in stems.items()}
    samplerate, channels = _common_format(infos)
    fmt = fmt or OutputFormat()
    with ExitStack() as stack:
        streams = {
            name: stack.enter_context(
                closing(
                    decode_blocks(
                        path, samplerate=samplerate, channels=channels, block_frames=BLOCK_FRAMES
                    )
                )
            )
            for name, path in stems.items()
        }
        writer = stack.enter_context(
            StemWriter(out, samplerate=samplerate, channels=channels, fmt=fmt, clip=clip)
        )
        for blocks in _in_step(streams):
            mixed = np.zeros_like(next(iter(blocks.values())))
            for name, block in blocks.items():
                if gains.get(name, 1.0):
                    mixed += np.float32(gains.get(name, 1.0)) * block
            writer.write(mixed)
        return writer.commit()
