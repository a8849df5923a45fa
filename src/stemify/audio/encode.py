"""Write one stem through an ffmpeg encoder, never leaving a partial file at the final path:
encode into a hidden file beside it, rename into place only on :meth:`StemWriter.commit`."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

import numpy as np
import numpy.typing as npt

from stemify.audio.probe import ffmpeg_error_line, missing_tool_error
from stemify.errors import EncodeError, InvalidOptionError, StorageFullError

ClipMode = Literal["rescale", "clamp", "none"]
Container = Literal["wav", "flac", "mp3"]

_BIT_DEPTHS: dict[str, tuple[int, ...]] = {"wav": (16, 24, 32), "flac": (16, 24)}
# The MPEG-1 layer III bitrates from 96 up; lame would silently round anything else.
_MP3_BITRATES = (96, 112, 128, 160, 192, 224, 256, 320)
_CLIP_MODES = ("rescale", "clamp", "none")
# Frames per chunk when replaying the rescale spool: bounded memory whatever the stem length.
_CHUNK_FRAMES = 65536
# Once stdin is closed ffmpeg only encodes what is buffered in the pipe; longer means stuck.
_EXIT_TIMEOUT_S = 60.0

_State = Literal["open", "finished", "committed", "aborted"]


@dataclass(frozen=True)
class OutputFormat:
    container: Container = "wav"
    bit_depth: int = 16
    """wav: 16, 24 or 32 (32-bit float); flac: 16 or 24; ignored for mp3."""
    mp3_bitrate: int = 320
    """kbps, one of 96, 112, 128, 160, 192, 224, 256, 320."""

    @property
    def extension(self) -> str:
        """File name extension without the dot: "wav", "flac" or "mp3"."""
        return self.container

    def validate(self) -> None:
        if self.container not in ("wav", "flac", "mp3"):
            raise InvalidOptionError(
                f"unknown output format {self.container!r}: choose wav, flac or mp3"
            )
        if self.container == "mp3":
            if self.mp3_bitrate not in _MP3_BITRATES:
                choices = ", ".join(map(str, _MP3_BITRATES))
                raise InvalidOptionError(
                    f"mp3 bitrate {self.mp3_bitrate} kbps is not available: choose {choices}"
                )
            return
        depths = _BIT_DEPTHS[self.container]
        if self.bit_depth not in depths:
            choices = " or ".join(map(str, depths))
            raise InvalidOptionError(
                f"{self.container} cannot be {self.bit_depth}-bit: choose {choices}"
                + (" (32 is 32-bit float)" if self.container == "wav" else "")
            )


def _codec_args(fmt: OutputFormat) -> list[str]:
    if fmt.container == "mp3":
        return ["-c:a", "libmp3lame", "-b:a", f"{fmt.mp3_bitrate}k", "-f", "mp3"]
    if fmt.container == "flac":
        if fmt.bit_depth == 24:
            # ffmpeg has no 24-bit sample format: s32 samples with 24 coded bits, stated
            # explicitly because newer ffmpeg can also write (rarely playable) 32-bit FLAC.
            depth = ["-sample_fmt", "s32", "-bits_per_raw_sample", "24"]
        else:
            depth = ["-sample_fmt", "s16"]
        return ["-c:a", "flac", *depth, "-f", "flac"]
    codec = {16: "pcm_s16le", 24: "pcm_s24le", 32: "pcm_f32le"}[fmt.bit_depth]
    # RF64 only past the 4 GiB a plain WAV header can describe; below that a normal WAV.
    return ["-c:a", codec, "-rf64", "auto", "-f", "wav"]


class StemWriter:
    """Encode float32 blocks shaped ``(channels, n)`` into ``final_path``.

    ``write`` blocks, ``finish`` to complete the hidden temporary file, ``commit`` to rename it
    into place; ``abort`` (or leaving a ``with`` block by an exception) removes every temporary
    file. Any failure raises :class:`EncodeError` (:class:`StorageFullError` on a full disk)
    and cleans up the same way.

    Clipping follows ``demucs.audio.prevent_clip``. "rescale" needs the peak of the whole stem
    before the first sample is encoded, so the blocks are spooled as raw float32 to a hidden
    file beside the output and replayed through the scaling by ``finish``.
    """

    def __init__(
        self,
        final_path: Path,
        *,
        samplerate: int,
        channels: int,
        fmt: OutputFormat,
        clip: ClipMode = "rescale",
    ) -> None:
        fmt.validate()
        if clip not in _CLIP_MODES:
            raise InvalidOptionError(f"unknown clip mode {clip!r}: choose rescale, clamp or none")
        if samplerate <= 0 or channels <= 0:
            raise ValueError("samplerate and channels must be positive")
        self.final_path = final_path
        self._samplerate = samplerate
        self._channels = channels
        self._fmt = fmt
        self._clip = clip
        # Same directory as the final file, so the rename in commit() is atomic.
        self._temp = final_path.with_name(f".{final_path.name}.partial-{secrets.token_hex(6)}")
        self._spool_path: Path | None = None
        self._spool: IO[bytes] | None = None
        self._encoder: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._peak = np.float32(0.0)
        self._state: _State = "open"
        try:
            final_path.parent.mkdir(parents=True, exist_ok=True)
            if clip == "rescale":
                fd, spool = tempfile.mkstemp(
                    prefix=f".{final_path.name}.spool-", dir=final_path.parent
                )
                self._spool_path = Path(spool)
                self._spool = os.fdopen(fd, "w+b")
            else:
                self._start_encoder()
        except OSError as error:
            raise self._failed(error.strerror or str(error)) from error

    def __enter__(self) -> StemWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()

    def write(self, block: npt.NDArray[np.floating]) -> None:
        if self._state != "open":
            raise RuntimeError(f"cannot write to a {self._state} StemWriter")
        if block.ndim != 2 or block.shape[0] != self._channels:
            raise ValueError(f"expected a ({self._channels}, n) block, got {block.shape}")
        if block.shape[1] == 0:
            return
        samples = block.astype(np.float32, copy=False)
        if self._clip == "clamp":
            samples = np.clip(samples, -0.99, 0.99)
        interleaved = np.ascontiguousarray(samples.T, dtype="<f4")
        if self._spool is not None:
            self._peak = max(self._peak, np.abs(samples).max())
            try:
                self._spool.write(interleaved.data)
            except OSError as error:
                raise self._failed(error.strerror or str(error)) from error
        else:
            self._feed(interleaved)

    def finish(self) -> None:
        """Complete the temporary file; the final path is still untouched. Idempotent."""
        if self._state == "finished":
            return
        if self._state != "open":
            raise RuntimeError(f"cannot finish a {self._state} StemWriter")
        try:
            if self._spool is not None:
                self._replay_spool()
            assert self._encoder is not None and self._encoder.stdin is not None
            try:
                self._encoder.stdin.close()
            except BrokenPipeError:
                raise self._failed() from None
            try:
                returncode = self._encoder.wait(timeout=_EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise self._failed("the encoder did not finish") from None
            if returncode != 0:
                raise self._failed()
        except OSError as error:
            raise self._failed(error.strerror or str(error)) from error
        self._close_stderr()
        self._state = "finished"

    def commit(self) -> Path:
        """Rename the finished file to ``final_path`` (replacing any file there) and return it;
        finishes first if needed."""
        if self._state == "committed":
            return self.final_path
        self.finish()
        try:
            os.replace(self._temp, self.final_path)
        except OSError as error:
            raise self._failed(error.strerror or str(error)) from error
        self._state = "committed"
        return self.final_path

    def abort(self) -> None:
        """Stop the encoder and delete every temporary file. Idempotent; after commit() it
        leaves the committed file alone."""
        if self._state in ("committed", "aborted"):
            return
        self._state = "aborted"
        self._stop_encoder()
        self._close_stderr()
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        for path in (self._spool_path, self._temp):
            # Cleanup after another failure must not raise a second one (say the directory
            # itself is gone or was never created).
            with contextlib.suppress(OSError):
                if path is not None:
                    path.unlink(missing_ok=True)

    def _start_encoder(self) -> None:
        cmd = ["ffmpeg", "-nostdin", "-v", "error"]
        # -n: never overwrite, in case the random temporary name exists after all.
        cmd += ["-n", "-f", "f32le", "-ar", str(self._samplerate), "-ac", str(self._channels)]
        cmd += ["-i", "pipe:0", *_codec_args(self._fmt), str(self._temp)]
        # stderr goes to a file: a pipe nobody reads while we write stdin could fill and deadlock.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the encoder
        try:
            self._encoder = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr
            )
        except FileNotFoundError:
            self.abort()
            raise missing_tool_error("ffmpeg") from None

    def _feed(self, interleaved: npt.NDArray[np.float32]) -> None:
        assert self._encoder is not None and self._encoder.stdin is not None
        try:
            self._encoder.stdin.write(interleaved.data)
        except OSError:
            # Mostly a broken pipe: ffmpeg exited, and its stderr says why.
            raise self._failed() from None

    def _replay_spool(self) -> None:
        assert self._spool is not None and self._spool_path is not None
        scale = max(np.float32(1.01) * self._peak, np.float32(1.0))
        self._spool.seek(0)
        self._start_encoder()
        chunk_bytes = _CHUNK_FRAMES * self._channels * 4
        while chunk := self._spool.read(chunk_bytes):
            samples = np.frombuffer(chunk, dtype="<f4")
            if scale > 1.0:
                samples = (samples / scale).astype("<f4", copy=False)
            self._feed(samples)
        self._spool.close()
        self._spool = None
        self._spool_path.unlink()
        self._spool_path = None

    def _stop_encoder(self) -> None:
        if self._encoder is None:
            return
        if self._encoder.poll() is None:
            self._encoder.kill()
        self._encoder.wait()
        if self._encoder.stdin is not None:
            # Flushing into a dead encoder's pipe raises; nothing is left to save.
            with contextlib.suppress(OSError):
                self._encoder.stdin.close()

    def _close_stderr(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _failed(self, reason: str | None = None) -> EncodeError | StorageFullError:
        """Clean up everything and describe the failure, by default from ffmpeg's stderr."""
        if reason is None:
            reason = self._encoder_reason()
        self.abort()
        if "No space left on device" in reason:  # ffmpeg's words or the OS's (the spool)
            return StorageFullError(f"could not write {self.final_path.name}: no space left")
        return EncodeError(f"could not write {self.final_path.name}: {reason}")

    def _encoder_reason(self) -> str:
        assert self._encoder is not None
        self._stop_encoder()
        text = ""
        if self._stderr is not None:
            self._stderr.seek(0)
            text = self._stderr.read().decode("utf-8", errors="replace")
        line = ffmpeg_error_line(text)
        if line:
            # Name the file the user asked for, not our hidden temporary one.
            return line.replace(str(self._temp), self.final_path.name)
        code = self._encoder.returncode
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"the encoder was stopped by {signal.Signals(-code).name}"
        return f"the encoder exited with code {code}"
