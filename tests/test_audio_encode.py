"""StemWriter and OutputFormat against the real ffmpeg: formats, clipping, nothing partial."""

from __future__ import annotations

import contextlib
import json
import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from demucs.audio import prevent_clip
from support.processes import ffmpeg_children

from stemify.audio import ClipMode, OutputFormat, StemWriter, decode_blocks
from stemify.errors import EncodeError, InvalidOptionError

pytestmark = pytest.mark.unit

RATE = 44100


def signal(seconds: float = 2.0, peak: float = 0.8) -> np.ndarray:
    """Stereo float32 with two different tones plus noise, so every bit and channel matters."""
    t = np.arange(int(seconds * RATE)) / RATE
    noise = np.random.default_rng(0).uniform(-1, 1, (2, t.size))
    audio = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 660 * t)])
    audio += 0.2 * noise
    return (audio * (peak / np.abs(audio).max())).astype(np.float32)


def write(path: Path, audio: np.ndarray, fmt: OutputFormat, clip: ClipMode = "rescale") -> Path:
    with StemWriter(path, samplerate=RATE, channels=audio.shape[0], fmt=fmt, clip=clip) as writer:
        for start in range(0, audio.shape[1], 30000):  # uneven blocks; the last one is short
            writer.write(audio[:, start : start + 30000])
        writer.finish()
        return writer.commit()


def read(path: Path) -> np.ndarray:
    return np.concatenate(list(decode_blocks(path, samplerate=RATE, channels=2)), axis=1)


def stream_facts(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", str(path)],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    facts: dict[str, Any] = json.loads(out)["streams"][0]
    return facts


# format, codec, what ffprobe says about the depth, allowed error (None: lossy)
LOSSLESS = [
    (OutputFormat("wav", 16), "pcm_s16le", {"bits_per_sample": 16}, 0.5 / 2**15),
    (OutputFormat("wav", 24), "pcm_s24le", {"bits_per_sample": 24}, 1.0 / 2**23),
    (OutputFormat("wav", 32), "pcm_f32le", {"bits_per_sample": 32, "sample_fmt": "flt"}, 0.0),
    (OutputFormat("flac", 16), "flac", {"bits_per_raw_sample": "16", "sample_fmt": "s16"}, 2**-16),
    (OutputFormat("flac", 24), "flac", {"bits_per_raw_sample": "24", "sample_fmt": "s32"}, 2**-23),
]


@pytest.mark.parametrize(
    ("fmt", "codec", "depth", "error"),
    LOSSLESS,
    ids=[f"{f.container}{f.bit_depth}" for f, *_ in LOSSLESS],
)
def test_lossless_round_trip(
    tmp_path: Path, fmt: OutputFormat, codec: str, depth: dict[str, Any], error: float
) -> None:
    audio = signal()
    path = write(tmp_path / f"vocals.{fmt.extension}", audio, fmt)

    facts = stream_facts(path)
    assert facts["codec_name"] == codec
    assert (int(facts["sample_rate"]), facts["channels"]) == (RATE, 2)
    assert {key: facts[key] for key in depth} == depth
    decoded = read(path)
    assert decoded.shape == audio.shape
    assert np.abs(decoded - audio).max() <= error


@pytest.mark.parametrize("kbps", [96, 192, 320])
def test_mp3_round_trip(tmp_path: Path, kbps: int) -> None:
    audio = signal()
    path = write(tmp_path / "drums.mp3", audio, OutputFormat("mp3", mp3_bitrate=kbps))

    facts = stream_facts(path)
    assert (facts["codec_name"], int(facts["sample_rate"]), facts["channels"]) == ("mp3", RATE, 2)
    assert int(facts["bit_rate"]) == kbps * 1000
    decoded = read(path)
    # lame's Xing/LAME header lets ffmpeg trim encoder delay and padding; allow a frame anyway.
    assert abs(decoded.shape[1] - audio.shape[1]) <= 1152
    n = min(decoded.shape[1], audio.shape[1])
    for channel in range(2):
        assert np.corrcoef(decoded[channel, :n], audio[channel, :n])[0, 1] > 0.9


def test_streaming_and_spooled_paths_write_the_same(tmp_path: Path) -> None:
    # In range, "rescale" (spooled) and "none" (streamed) must give bit-identical files' audio.
    audio = signal(peak=0.5)
    fmt = OutputFormat("wav", 32)
    spooled = read(write(tmp_path / "a.wav", audio, fmt, clip="rescale"))
    streamed = read(write(tmp_path / "b.wav", audio, fmt, clip="none"))
    assert np.array_equal(spooled, audio)
    assert np.array_equal(streamed, audio)


# --- clipping, as demucs.audio.prevent_clip -------------------------------------------------


@pytest.mark.parametrize("mode", ["rescale", "clamp", "none"])
@pytest.mark.parametrize("peak", [1.6, 0.995, 0.5])
def test_clip_modes_match_demucs(tmp_path: Path, mode: ClipMode, peak: float) -> None:
    audio = signal(peak=peak)
    expected = prevent_clip(torch.from_numpy(audio), mode=mode).numpy()

    decoded = read(write(tmp_path / "bass.wav", audio, OutputFormat("wav", 32), clip=mode))

    np.testing.assert_allclose(decoded, expected, rtol=0, atol=1e-7)


def test_clip_modes_in_numbers(tmp_path: Path) -> None:
    audio = signal(peak=1.6)
    fmt = OutputFormat("wav", 32)

    rescaled = read(write(tmp_path / "rescale.wav", audio, fmt, clip="rescale"))
    np.testing.assert_allclose(rescaled, audio / (1.01 * 1.6), atol=1e-6)
    assert np.abs(rescaled).max() == pytest.approx(1 / 1.01)

    clamped = read(write(tmp_path / "clamp.wav", audio, fmt, clip="clamp"))
    assert np.abs(clamped).max() == np.float32(0.99)
    inside = np.abs(audio) < 0.99
    assert np.array_equal(clamped[inside], audio[inside])

    untouched = read(write(tmp_path / "none.wav", audio, fmt, clip="none"))
    assert np.abs(untouched).max() == np.float32(1.6)


# --- nothing partial ------------------------------------------------------------------------


def test_final_path_appears_only_on_commit(tmp_path: Path) -> None:
    final = tmp_path / "stems" / "vocals.flac"  # the directory is created
    writer = StemWriter(final, samplerate=RATE, channels=2, fmt=OutputFormat("flac", 16))
    writer.write(signal())
    (spool,) = final.parent.iterdir()
    assert spool.name.startswith(".vocals.flac.spool-")

    writer.finish()
    assert not final.exists()
    hidden = list(final.parent.iterdir())
    assert len(hidden) == 1 and hidden[0].name.startswith(".vocals.flac.partial-")

    assert writer.commit() == final
    assert list(final.parent.iterdir()) == [final]
    writer.abort()  # after commit: a no-op
    assert final.exists()


@pytest.mark.parametrize("clip", ["rescale", "clamp"])
@pytest.mark.parametrize("stage", ["created", "written", "finished"])
def test_abort_leaves_nothing(tmp_path: Path, clip: ClipMode, stage: str) -> None:
    writer = StemWriter(
        tmp_path / "other.mp3", samplerate=RATE, channels=2, fmt=OutputFormat("mp3"), clip=clip
    )
    if stage in ("written", "finished"):
        writer.write(signal())
    if stage == "finished":
        writer.finish()
    if stage != "created" or clip == "rescale":
        assert list(tmp_path.iterdir())  # there is something to clean up
    if clip == "clamp" and stage != "finished":
        assert len(ffmpeg_children()) == 1

    writer.abort()
    writer.abort()

    assert list(tmp_path.iterdir()) == []
    assert ffmpeg_children() == []
    with pytest.raises(RuntimeError):
        writer.write(signal())


def test_an_exception_in_the_with_block_aborts(tmp_path: Path) -> None:
    with (
        pytest.raises(KeyboardInterrupt),
        StemWriter(tmp_path / "x.wav", samplerate=RATE, channels=2, fmt=OutputFormat()) as w,
    ):
        w.write(signal())
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Lower RLIMIT_FSIZE for processes started inside: to them it looks like a full disk.
    (chmod cannot make a directory unwritable here, tests run as root.)"""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_encoder_failure_while_streaming(tmp_path: Path) -> None:
    fmt = OutputFormat("wav", 32)
    with file_size_limit(100_000):  # the encoder starts now and inherits the limit
        writer = StemWriter(
            tmp_path / "piano.wav", samplerate=RATE, channels=2, fmt=fmt, clip="none"
        )

    with pytest.raises(EncodeError, match=r"could not write piano.wav: .*SIGXFSZ"):
        writer.write(signal(seconds=5.0))
        writer.finish()
    assert list(tmp_path.iterdir()) == []


def test_encoder_failure_while_replaying_the_spool(tmp_path: Path) -> None:
    writer = StemWriter(
        tmp_path / "piano.flac", samplerate=RATE, channels=2, fmt=OutputFormat("flac")
    )
    writer.write(signal(seconds=5.0))

    with (
        file_size_limit(100_000),
        pytest.raises(EncodeError, match=r"could not write piano.flac: "),
    ):
        writer.finish()  # the encoder starts here
    assert list(tmp_path.iterdir()) == []
    writer.abort()


def test_parent_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "album"
    blocker.write_text("not a directory")
    with pytest.raises(EncodeError, match=r"could not write vocals.wav: "):
        StemWriter(blocker / "vocals.wav", samplerate=RATE, channels=2, fmt=OutputFormat())
    assert list(tmp_path.iterdir()) == [blocker]


def test_final_path_taken_by_a_directory(tmp_path: Path) -> None:
    (tmp_path / "vocals.wav").mkdir()
    writer = StemWriter(tmp_path / "vocals.wav", samplerate=RATE, channels=2, fmt=OutputFormat())
    writer.write(signal())
    with pytest.raises(EncodeError, match=r"could not write vocals.wav: "):
        writer.commit()
    assert [p.name for p in tmp_path.iterdir()] == ["vocals.wav"]


# --- options --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        (OutputFormat("flac", 32), "flac cannot be 32-bit: choose 16 or 24"),
        (OutputFormat("wav", 8), "wav cannot be 8-bit: choose 16 or 24 or 32"),
        (OutputFormat("mp3", mp3_bitrate=500), "mp3 bitrate 500 kbps is not available"),
        (OutputFormat("mp3", mp3_bitrate=64), "mp3 bitrate 64 kbps"),
        (OutputFormat("mp3", mp3_bitrate=100), "mp3 bitrate 100 kbps"),
        (OutputFormat("ogg"), "unknown output format 'ogg'"),  # type: ignore[arg-type]
    ],
)
def test_bad_formats(fmt: OutputFormat, message: str) -> None:
    with pytest.raises(InvalidOptionError, match=message):
        fmt.validate()
    with pytest.raises(InvalidOptionError, match=message):
        StemWriter(Path("/nonexistent/x"), samplerate=RATE, channels=2, fmt=fmt)


def test_good_formats() -> None:
    for fmt in [OutputFormat(), OutputFormat("mp3", bit_depth=8, mp3_bitrate=128)]:
        fmt.validate()
    assert [OutputFormat(c).extension for c in ("wav", "flac", "mp3")] == ["wav", "flac", "mp3"]


def test_bad_clip_mode_and_block_shape(tmp_path: Path) -> None:
    with pytest.raises(InvalidOptionError, match="unknown clip mode 'tanh'"):
        StemWriter(tmp_path / "x.wav", samplerate=RATE, channels=2, fmt=OutputFormat(), clip="tanh")  # type: ignore[arg-type]
    with StemWriter(tmp_path / "x.wav", samplerate=RATE, channels=2, fmt=OutputFormat()) as w:
        with pytest.raises(ValueError, match=r"expected a \(2, n\) block"):
            w.write(np.zeros((1, 100), dtype=np.float32))
        w.abort()
