"""Stream any input ffmpeg can read as float32 blocks at the model's rate and channel count,
holding one block in memory at a time."""

from __future__ import annotations

import contextlib
import functools
import io
import math
import select
import subprocess
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import Literal, cast

import numpy as np
import numpy.typing as npt

from stemify.audio.limits import DEFAULT_LIMITS, MediaLimits, input_options, limited
from stemify.audio.probe import (
    AudioInfo,
    check_input_file,
    ffmpeg_error_line,
    limit_hit,
    missing_tool_error,
)
from stemify.errors import AudioLimitError, InvalidAudioError
from stemify.formatting import format_duration

Block = npt.NDArray[np.float32]
Blocks = Generator[Block, None, None]
Resampler = Literal["auto", "swr", "soxr"]
"""ffmpeg's resampling engine; "auto" takes soxr (higher quality) when this ffmpeg has it."""

# After stdout hits EOF ffmpeg only has to flush and exit; longer means it is stuck.
_EXIT_TIMEOUT_S = 60.0
# Decoded audio may run this far past the duration limit (encoder priming, rounding).
_DURATION_SLACK_S = 1.0


@functools.cache
def soxr_available() -> bool:
    """Whether this ffmpeg was built with libsoxr, found by resampling a few ms of silence
    (the option list of ``aresample`` names soxr even in builds without it)."""
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=48000"]
    cmd += ["-t", "0.01", "-af", "aresample=44100:resampler=soxr", "-f", "null", "-"]
    try:
        result = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False
        )
    except FileNotFoundError:
        raise missing_tool_error("ffmpeg") from None
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


def decode_blocks(
    path: Path,
    *,
    samplerate: int,
    channels: int,
    block_frames: int = 65536,
    resampler: Resampler = "auto",
    expected: AudioInfo | None = None,
    limits: MediaLimits = DEFAULT_LIMITS,
) -> Blocks:
    """Yield float32 blocks shaped ``(channels, n)``, ``n <= block_frames`` (only the last may
    be shorter), of the first audio stream of ``path``.

    ffmpeg does the channel mapping (mono is duplicated, 5.1 gets its standard stereo downmix)
    and the resampling. Raises :class:`InvalidAudioError` at the end of the stream if ffmpeg
    failed or reported any error, or if there were no samples at all. Close the generator
    (``.close()`` or ``contextlib.closing``) to stop early: ffmpeg is killed and reaped.

    With ``expected`` (the file's :func:`probe` result), also checks the whole file was
    decoded, as :func:`decode_checked`.

    ffmpeg runs under ``limits`` (memory, CPU, no output for ``stall_s``), reads only local
    files in the formats of :data:`~stemify.audio.limits.DEMUXERS`, and is stopped with an
    AudioLimitError once more than ``limits.max_duration_s`` of audio came out, whatever
    the file's header claimed."""
    if samplerate <= 0 or channels <= 0 or block_frames <= 0:
        raise ValueError("samplerate, channels and block_frames must be positive")
    check_input_file(path)
    if resampler == "auto":
        resampler = "soxr" if soxr_available() else "swr"
    cmd = ["ffmpeg", "-nostdin", "-v", "error", *input_options(), "-i", str(path)]
    cmd = limited(cmd, limits, missing_tool_error("ffmpeg"))
    cmd += ["-map", "0:a:0", "-vn"]
    if resampler == "soxr":
        cmd += ["-af", "aresample=resampler=soxr"]
    cmd += ["-ac", str(channels), "-ar", str(samplerate)]
    cmd += ["-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"]
    # A plain function returning the generator, so bad arguments fail here, not at first next().
    max_frames = None
    if limits.max_duration_s is not None:
        max_frames = math.ceil((limits.max_duration_s + _DURATION_SLACK_S) * samplerate)
    blocks = _stream(cmd, path, channels, block_frames, max_frames, limits)
    if expected is not None:
        return _checked(blocks, path, expected.duration_s, samplerate)
    return blocks


def decode_checked(
    path: Path,
    *,
    info: AudioInfo,
    samplerate: int,
    channels: int,
    block_frames: int = 65536,
    resampler: Resampler = "auto",
    limits: MediaLimits = DEFAULT_LIMITS,
) -> Blocks:
    """:func:`decode_blocks`, plus a check that the whole file was decoded.

    ffmpeg stops quietly at the cut of a truncated file (a cut mp3 even exits without any
    error), but the duration in the header (FLAC STREAMINFO, mp3 Xing frame count) still
    promises the full length. So a decode that falls short of ``info.duration_s`` by more
    than max(0.5 s, 2 %) is an error; the margin absorbs encoder priming and padding
    (about 50 ms for mp3/aac) and container rounding."""
    if info.samplerate == samplerate:
        resampler = "swr"  # nothing to resample, so skip looking for soxr
    return decode_blocks(
        path,
        samplerate=samplerate,
        channels=channels,
        block_frames=block_frames,
        resampler=resampler,
        expected=info,
        limits=limits,
    )


def _checked(blocks: Blocks, path: Path, expected_s: float, samplerate: int) -> Blocks:
    frames = 0
    failure: InvalidAudioError | None = None
    with contextlib.closing(blocks):
        try:
            for block in blocks:
                frames += block.shape[1]
                yield block
        except InvalidAudioError as error:
            failure = error
    decoded_s = frames / samplerate
    if expected_s - decoded_s > max(0.5, 0.02 * expected_s):
        raise InvalidAudioError(
            f"{path.name} is truncated or corrupt: decoded {decoded_s:.1f} s of {expected_s:.1f} s"
        ) from failure
    if failure is not None:
        raise failure


def _stream(
    cmd: list[str],
    path: Path,
    channels: int,
    block_frames: int,
    max_frames: int | None,
    limits: MediaLimits,
) -> Blocks:
    frame_bytes = 4 * channels
    buffer = np.empty(block_frames * channels, dtype="<f4")
    view = buffer.data.cast("B")
    frames_total = 0
    # stderr goes to a file: a pipe nobody reads while we read stdout could fill and deadlock.
    with tempfile.TemporaryFile() as stderr:
        try:
            process = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, bufsize=0
            )
        except FileNotFoundError:
            raise missing_tool_error("ffmpeg") from None
        # bufsize=0 makes stdout the raw pipe, which has readinto.
        stdout = cast(io.RawIOBase, process.stdout)
        try:
            while True:
                filled = _read_full(stdout, view, path, limits.stall_s)
                frames = filled // frame_bytes
                if frames:
                    frames_total += frames
                    if max_frames is not None and frames_total > max_frames:
                        assert limits.max_duration_s is not None
                        limit = format_duration(limits.max_duration_s)
                        raise AudioLimitError(
                            f"the audio is longer than the {limit} limit (decoding stopped there)"
                        )
                    interleaved = buffer[: frames * channels].reshape(frames, channels)
                    # A copy, so the next read cannot overwrite a block the consumer still holds.
                    yield np.ascontiguousarray(interleaved.T, dtype=np.float32)
                if filled < len(view):
                    break
            try:
                returncode = process.wait(timeout=_EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise InvalidAudioError(f"could not decode {path.name}: ffmpeg hung") from None
        finally:
            # Runs also when the consumer stops early (GeneratorExit) or raises: no zombies.
            if process.poll() is None:
                process.kill()
            process.wait()
            stdout.close()
        stderr.seek(0)
        errors = stderr.read().decode("utf-8", errors="replace")
    # ffmpeg logs, skips and carries on past a damaged frame (exit 0); such files play fine
    # elsewhere, so only a failed exit is fatal here. A cut file is caught by the length check.
    if returncode != 0:
        reason = (
            limit_hit(returncode, errors, "ffmpeg", limits)
            or ffmpeg_error_line(errors, path)
            or f"ffmpeg exited with code {returncode}"
        )
        raise InvalidAudioError(f"could not decode {path.name}: {reason}")
    if frames_total == 0:
        raise InvalidAudioError(f"{path.name} contains no audio samples")


def _read_full(stream: io.RawIOBase, view: memoryview, path: Path, stall_s: float) -> int:
    """Fill ``view`` from a pipe, which may return fewer bytes per read; short only at EOF.
    A pipe that stays silent for ``stall_s`` is an ffmpeg stuck on a hostile file."""
    filled = 0
    # poll, not select: select fails on descriptors above 1024, which a busy server reaches.
    waiter = select.poll()
    waiter.register(stream, select.POLLIN)
    while filled < len(view):
        if not waiter.poll(stall_s * 1000):
            raise InvalidAudioError(
                f"could not decode {path.name}: ffmpeg produced no audio for {stall_s:g} s"
            )
        count = stream.readinto(view[filled:])
        if not count:
            break
        filled += count
    return filled
