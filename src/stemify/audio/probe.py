"""Facts about an input file (codec, channels, rate, duration) from ffprobe, with every way an
upload can be unusable turned into one clear :class:`InvalidAudioError`."""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stemify.audio.limits import (
    DEFAULT_LIMITS,
    REMOTE_PROTOCOLS,
    MediaLimits,
    input_options,
    limited,
)
from stemify.errors import AudioLimitError, InvalidAudioError, StorageError, ToolMissingError

# ffmpeg prefixes messages with "[flac @ 0x55d1c0ffee00] "; the address means nothing to a user.
_COMPONENT_PREFIX = re.compile(r"^\[[^\]]* @ 0x[0-9a-fA-F]+\]\s*")
# Lines of ffmpeg's network layers: reading a stored object failed, not the object itself.
_TRANSPORT_LINE = re.compile(r"^\[(?:https?|tcp|tls) @ 0x[0-9a-fA-F]+\]\s*(.+)$", re.MULTILINE)
# The only warning we look for: it marks durations guessed from the first frame's bitrate, which
# can be wildly wrong (a VBR mp3 without a Xing header and a quiet intro: 13 s guessed for 6 s).
_ESTIMATED_DURATION = "Estimating duration from bitrate"
# ffprobe's confidence in the format it found (100: certain; a real mp3 without tags scores
# 51, one behind 3 kB of junk 25). Below this it matched on nothing but the file's extension.
MIN_PROBE_SCORE = 25
# Files that are certainly not media, named for a clearer refusal than "cannot read" (and
# refused even when they carry an audio stream inside, as a zip of an mp3 does).
_NOT_MEDIA = (
    (b"PK\x03\x04", "a zip archive"),
    (b"PK\x05\x06", "a zip archive"),
    (b"%PDF", "a PDF document"),
    (b"\x7fELF", "a program"),
    (b"MZ", "a program"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"#EXTM3U", "a playlist"),
    (b"<", "a web page or XML document"),
)


@dataclass(frozen=True)
class AudioInfo:
    duration_s: float
    """Of the first audio stream; falls back to the container, then to counting packets."""
    codec: str
    """ffmpeg's codec name: "mp3", "flac", "pcm_s16le", "aac", "opus", ..."""
    channels: int
    samplerate: int
    format_name: str
    """The container, as ffprobe's ``format_name`` (e.g. "mov,mp4,m4a,3gp,3g2,mj2")."""


def missing_tool_error(tool: str) -> ToolMissingError:
    return ToolMissingError(f"{tool} not found: install ffmpeg (apt-get install ffmpeg)")


def ffmpeg_error_line(stderr: str, path: Path | None = None) -> str:
    """The first non-empty line of ffmpeg's stderr, made readable: no ``[flac @ 0x..]`` prefix
    and the file's bare name instead of its full path."""
    for raw in stderr.splitlines():
        line = _COMPONENT_PREFIX.sub("", raw).strip()
        if line and path is not None:
            # Callers name the file themselves: "could not decode x.wav: <this line>".
            return line.removeprefix(f"{path}: ").replace(str(path), path.name)
        if line:
            return line
    return ""


def check_input_file(path: Path) -> None:
    # Checked up front because ffmpeg's own wording for these ("No such file or directory" as
    # a decode error) would read like a problem with the audio.
    if not path.exists():
        raise InvalidAudioError(f"{path.name} does not exist")
    if not path.is_file():
        raise InvalidAudioError(f"{path.name} is not a file")


@dataclass(frozen=True)
class _Input:
    """What ffprobe opens (a path or URL), how messages name it, and what it may use."""

    target: str
    name: str
    protocols: tuple[str, ...] = ("file",)


def probe(path: Path, *, limits: MediaLimits = DEFAULT_LIMITS) -> AudioInfo:
    """The file's facts, or InvalidAudioError (not media; the content decides, never the
    name) or AudioLimitError (channels or sample rate outside ``limits``)."""
    check_input_file(path)
    with path.open("rb") as file:
        head = file.read(16)
    return _probe(_Input(str(path), path.name), head, path.stat().st_size, limits)


def probe_url(
    url: str, *, name: str, head: bytes, size: int, limits: MediaLimits = DEFAULT_LIMITS
) -> AudioInfo:
    """:func:`probe` of an object that ffprobe reads by HTTP ranges from ``url`` (a presigned
    link of the storage), so it never needs a local copy; ``head`` is its first 16 bytes and
    ``size`` its length, and messages call it ``name``."""
    return _probe(_Input(url, name, REMOTE_PROTOCOLS), head, size, limits)


def _probe(source: _Input, head: bytes, size: int, limits: MediaLimits) -> AudioInfo:
    name = source.name
    unreadable = f"{name} is not an audio or video file ffmpeg can read"
    if size == 0:
        raise InvalidAudioError(f"{unreadable} (the file is empty)")
    head = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    kind = next((what for magic, what in _NOT_MEDIA if head.startswith(magic)), None)
    if kind is not None:
        raise InvalidAudioError(f"{name} is {kind}, not an audio or video file")

    # -v warning rather than error: the one warning we need is _ESTIMATED_DURATION.
    cmd = ["ffprobe", *input_options(source.protocols), "-v", "warning", "-print_format", "json"]
    cmd += ["-show_format", "-show_streams"]
    result = _run(cmd, source, limits)
    if result.returncode != 0:
        transport = _TRANSPORT_LINE.search(result.stderr) if source.protocols != ("file",) else None
        if transport is not None:
            raise StorageError(f"the storage could not be read: {transport[1].strip()}")
        raise InvalidAudioError(_limit_hit(result, name, limits) or unreadable)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise InvalidAudioError(unreadable) from None

    streams: list[dict[str, Any]] = report.get("streams") or []
    fmt: dict[str, Any] = report.get("format") or {}
    if not streams:
        raise InvalidAudioError(unreadable)
    score = _positive_int(fmt.get("probe_score"))
    if score is not None and score < MIN_PROBE_SCORE:
        raise InvalidAudioError(f"{unreadable} (its content matches no known format)")
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    if audio is None:
        raise InvalidAudioError(f"{name} has no audio stream")

    codec = str(audio.get("codec_name") or "unknown")
    channels = _positive_int(audio.get("channels"))
    samplerate = _positive_int(audio.get("sample_rate"))
    if channels is None or samplerate is None:
        raise InvalidAudioError(f"{name} has an audio stream ffmpeg cannot decode ({codec})")
    check_bounds(name, channels, samplerate, limits)

    duration = None
    if _ESTIMATED_DURATION not in result.stderr:
        duration = (
            _seconds(audio.get("duration"))
            # Matroska/WebM keep per-stream durations only as a tag.
            or _tag_seconds((audio.get("tags") or {}).get("DURATION"))
            or _seconds(fmt.get("duration"))
        )
    if duration is None:
        # Piped FLAC, browser-recorded WebM and bitrate-guessed mp3s have no trustworthy
        # duration; reading every packet header (no decoding) gives the exact one.
        duration = _duration_from_packets(source, limits)
    if duration is None or duration <= 0.0:
        raise InvalidAudioError(f"{name} contains no audio samples")

    return AudioInfo(
        duration_s=duration,
        codec=codec,
        channels=channels,
        samplerate=samplerate,
        format_name=str(fmt.get("format_name") or "unknown"),
    )


def check_bounds(name: str, channels: int, samplerate: int, limits: MediaLimits) -> None:
    if channels > limits.max_channels:
        raise AudioLimitError(
            f"{name} has {channels} audio channels; at most {limits.max_channels} are supported"
        )
    if not limits.min_samplerate <= samplerate <= limits.max_samplerate:
        raise AudioLimitError(
            f"{name} has a sample rate of {_hz(samplerate)}; supported rates are "
            f"{_hz(limits.min_samplerate)} to {_hz(limits.max_samplerate)}"
        )


def limit_hit(returncode: int, stderr: str, tool: str, limits: MediaLimits) -> str | None:
    """What a limit did to a failed ffprobe/ffmpeg run, if one did."""
    if returncode == -signal.SIGXCPU:
        return f"{tool} used more than the {limits.cpu_s} s CPU time limit"
    if "Cannot allocate memory" in stderr or "failed to map segment" in stderr:
        return f"{tool} needed more than the {limits.memory_mb} MB memory limit"
    return None


def _limit_hit(
    result: subprocess.CompletedProcess[str], name: str, limits: MediaLimits
) -> str | None:
    hit = limit_hit(result.returncode, result.stderr, "ffprobe", limits)
    return f"{name} could not be read: {hit}" if hit else None


def _hz(rate: int) -> str:
    return f"{rate / 1000:g} kHz" if rate >= 1000 else f"{rate} Hz"


def _run(cmd: list[str], source: _Input, limits: MediaLimits) -> subprocess.CompletedProcess[str]:
    command = limited(cmd, limits, missing_tool_error("ffprobe"))
    timeout_s = limits.probe_timeout_s
    try:
        return subprocess.run(
            [*command, source.target],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout_s,
            check=False,
        )
    except FileNotFoundError:
        raise missing_tool_error("ffprobe") from None
    except subprocess.TimeoutExpired:
        raise InvalidAudioError(
            f"{source.name} could not be read: ffprobe gave up after {timeout_s:g} s"
        ) from None


def _duration_from_packets(source: _Input, limits: MediaLimits) -> float | None:
    cmd = [
        "ffprobe",
        *input_options(source.protocols),
        "-v",
        "error",
        "-select_streams",
        "a:0",
        "-show_entries",
        "packet=pts_time,duration_time",
        "-of",
        "csv=p=0",
    ]
    result = _run(cmd, source, limits)
    if result.returncode != 0:
        return None
    first: float | None = None
    end: float | None = None
    total = 0.0
    for line in result.stdout.splitlines():
        fields = line.split(",")
        pts = _float(fields[0])
        length = _float(fields[1]) if len(fields) > 1 else None
        total += length or 0.0
        if pts is not None:
            first = pts if first is None else min(first, pts)
            stop = pts + (length or 0.0)
            end = stop if end is None else max(end, stop)
    if first is not None and end is not None:
        return end - first
    return total or None


def _float(value: object) -> float | None:
    try:
        return float(str(value))
    except ValueError:
        return None


def _seconds(value: object) -> float | None:
    seconds = _float(value)
    return seconds if seconds is not None and math.isfinite(seconds) and seconds > 0.0 else None


def _tag_seconds(value: object) -> float | None:
    """Parse a Matroska ``DURATION`` tag, ``HH:MM:SS.nnnnnnnnn``."""
    if not isinstance(value, str):
        return None
    parts = value.strip().split(":")
    if len(parts) != 3:
        return None
    hours, minutes, seconds = (_float(p) for p in parts)
    if hours is None or minutes is None or seconds is None:
        return None
    return _seconds(hours * 3600 + minutes * 60 + seconds)


def _positive_int(value: object) -> int | None:
    try:
        number = int(str(value))
    except ValueError:
        return None
    return number if number > 0 else None
