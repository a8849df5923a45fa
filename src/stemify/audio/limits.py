"""Bounds for untrusted media: what ffprobe and ffmpeg may use, and which inputs are refused
before any decoding.

ffprobe and ffmpeg run under ``prlimit`` (util-linux), which sets the address-space and CPU
limits in the child itself before it executes the tool: nothing runs unlimited, even for a
moment, and no Python code runs between fork and exec (``preexec_fn`` is unsafe in a
threaded process such as the API or a worker)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any

from stemify.errors import ToolMissingError
from stemify.settings import Settings


def _setting(name: str) -> Any:
    """A limit's default is its setting's default: declared once, in Settings."""
    return Settings.model_fields[name].default


@dataclass(frozen=True)
class MediaLimits:
    memory_mb: int = _setting("ffmpeg_memory_mb")
    """Address space of each ffprobe/ffmpeg process (its shared libraries alone take ~150)."""
    cpu_s: int = _setting("ffmpeg_cpu_s")
    """CPU seconds of each ffprobe/ffmpeg process."""
    probe_timeout_s: float = _setting("ffprobe_timeout_s")
    """Wall time of each ffprobe run."""
    stall_s: float = _setting("ffmpeg_stall_s")
    """A decoding ffmpeg that produces no audio for this long is stopped."""
    max_channels: int = _setting("max_channels")
    min_samplerate: int = _setting("min_samplerate")
    max_samplerate: int = _setting("max_samplerate")
    max_duration_s: float | None = None
    """Decoding stops with an error once this much audio came out, whatever the header said
    (the service sets its limit; ``stemify separate`` has none)."""

    def __post_init__(self) -> None:
        if self.memory_mb <= 0 or self.cpu_s <= 0:
            raise ValueError("memory_mb and cpu_s must be positive")
        if self.probe_timeout_s <= 0 or self.stall_s <= 0:
            raise ValueError("probe_timeout_s and stall_s must be positive")
        if not 0 < self.min_samplerate <= self.max_samplerate or self.max_channels <= 0:
            raise ValueError("the channel and sample-rate bounds must be positive and ordered")


DEFAULT_LIMITS = MediaLimits()


def media_limits(settings: Settings) -> MediaLimits:
    """The service's limits: the settings', and its duration limit enforced while decoding."""
    return MediaLimits(
        memory_mb=settings.ffmpeg_memory_mb,
        cpu_s=settings.ffmpeg_cpu_s,
        probe_timeout_s=settings.ffprobe_timeout_s,
        stall_s=settings.ffmpeg_stall_s,
        max_channels=settings.max_channels,
        min_samplerate=settings.min_samplerate,
        max_samplerate=settings.max_samplerate,
        max_duration_s=settings.max_duration_s,
    )


# The containers music and video come in. Anything else is refused before it is parsed:
# playlists and manifests (hls, dash, concat, sdp) that would make ffmpeg open other files or
# URLs, raw and image formats that turn any bytes into "audio", and a few hundred rarely used
# demuxers that are attack surface and nothing else.
DEMUXERS = (
    "aac", "ac3", "aiff", "amr", "amrnb", "amrwb", "ape", "asf", "au", "avi", "caf", "dsf",
    "dts", "dtshd", "eac3", "flac", "flv", "iff", "loas", "matroska", "webm", "mlp", "mov",
    "mp4", "m4a", "3gp", "3g2", "mp3", "mpc", "mpc8", "mpeg", "mpegts", "nut", "ogg", "oma",
    "rm", "shn", "tak", "truehd", "tta", "voc", "w64", "wav", "wsd", "wv", "xwma",
)  # fmt: skip


# What ffprobe needs to read an object of the storage by HTTP ranges (a presigned URL the
# service made itself): no other protocol a hostile file could name (the demuxers above open
# no further inputs).
REMOTE_PROTOCOLS = ("http", "https", "tcp", "tls")


def input_options(protocols: tuple[str, ...] = ("file",)) -> list[str]:
    """ffprobe/ffmpeg input options: local files only (unless told otherwise), in the formats
    above only."""
    return ["-protocol_whitelist", ",".join(protocols), "-format_whitelist", ",".join(DEMUXERS)]


def limited(cmd: list[str], limits: MediaLimits, missing: ToolMissingError) -> list[str]:
    """``cmd`` (a tool name and its arguments) run under the memory and CPU limits."""
    tool = shutil.which(cmd[0])
    if tool is None:
        raise missing
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        raise ToolMissingError(
            "prlimit not found: install util-linux (apt-get install util-linux); stemify runs "
            "ffmpeg under memory and CPU limits with it"
        )
    memory = limits.memory_mb << 20
    return [prlimit, f"--as={memory}", f"--cpu={limits.cpu_s}", "--", tool, *cmd[1:]]
