"""Reading any audio or video file ffmpeg understands, and writing stems, through ffmpeg."""

from stemify.audio.decode import Resampler, decode_blocks, decode_checked, soxr_available
from stemify.audio.encode import ClipMode, OutputFormat, StemWriter
from stemify.audio.probe import AudioInfo, probe, probe_url

__all__ = [
    "AudioInfo",
    "ClipMode",
    "OutputFormat",
    "Resampler",
    "StemWriter",
    "decode_blocks",
    "decode_checked",
    "probe",
    "probe_url",
    "soxr_available",
]
