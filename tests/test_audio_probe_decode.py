"""probe() and decode_blocks()/decode_checked() against files made by the real ffmpeg."""

from __future__ import annotations

import contextlib
import subprocess
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from support.processes import ffmpeg_children

from stemify.audio import AudioInfo, decode_blocks, decode_checked, probe, soxr_available
from stemify.audio.limits import MediaLimits
from stemify.errors import InvalidAudioError, ToolMissingError

pytestmark = pytest.mark.unit

MakeAudio = Callable[..., Path]  # the make_audio fixture of conftest.py
RATE = 44100


def decode_all(path: Path, **kwargs: object) -> np.ndarray:
    blocks = list(decode_blocks(path, samplerate=RATE, channels=2, **kwargs))  # type: ignore[arg-type]
    for block in blocks:
        assert block.dtype == np.float32
        assert block.ndim == 2 and block.shape[0] == 2
    return np.concatenate(blocks, axis=1)


def dominant_frequency(signal: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(signal))
    return float(np.argmax(spectrum) * RATE / signal.shape[0])


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


# name, ffmpeg output args, with video, length tolerance in seconds (lossy codecs add priming)
INPUTS = [
    ("in.wav", [], False, 0.005),
    ("in.flac", [], False, 0.005),
    ("in.mp3", [], False, 0.1),
    ("in.ogg", [], False, 0.1),
    ("in.opus", [], False, 0.1),
    ("in.m4a", [], False, 0.1),
    ("alac.m4a", ["-c:a", "alac"], False, 0.005),
    ("in.webm", [], False, 0.1),
    ("video.mp4", [], True, 0.1),
    ("video.mkv", [], True, 0.1),
]


@pytest.mark.parametrize(("name", "args", "video", "tolerance"), INPUTS, ids=[i[0] for i in INPUTS])
def test_every_input_format_decodes(
    make_audio: MakeAudio, name: str, args: list[str], video: bool, tolerance: float
) -> None:
    path = make_audio(name, seconds=2.0, args=args, video=video)
    info = probe(path)
    assert info.duration_s == pytest.approx(2.0, abs=tolerance)

    blocks = list(decode_checked(path, info=info, samplerate=RATE, channels=2, block_frames=16384))

    assert all(b.dtype == np.float32 and b.shape[0] == 2 for b in blocks)
    assert all(b.shape[1] == 16384 for b in blocks[:-1]) and 0 < blocks[-1].shape[1] <= 16384
    audio = np.concatenate(blocks, axis=1)
    assert audio.shape[1] / RATE == pytest.approx(2.0, abs=tolerance)
    # The fixture is ffmpeg's sine (amplitude 1/8) at half volume plus quiet pink noise.
    rms = float(np.sqrt(np.mean(audio**2)))
    assert 0.02 < rms < 0.06
    assert dominant_frequency(audio[0]) == pytest.approx(220, abs=1)


def test_mono_is_duplicated(make_audio: MakeAudio) -> None:
    audio = decode_all(make_audio("mono.flac", channels=1))
    assert audio.shape == (2, 2 * RATE)
    assert np.array_equal(audio[0], audio[1])
    assert np.abs(audio).max() > 0.05


def test_surround_is_downmixed(tmp_path: Path) -> None:
    # Signal only in the centre and the left surround: a real downmix puts the centre in both
    # sides and the surround in the left only; taking the first two channels would give silence.
    path = tmp_path / "surround.flac"
    ffmpeg(
        "-f", "lavfi", "-i", "sine=frequency=440:duration=1",
        "-af", "pan=5.1|FC=0.5*c0|BL=0.5*c0|FL=0*c0|FR=0*c0|LFE=0*c0|BR=0*c0",
        str(path),
    )  # fmt: skip
    assert probe(path).channels == 6

    audio = decode_all(path)

    assert audio.shape == (2, RATE)
    left, right = np.abs(audio).max(axis=1)
    assert right > 0.02
    assert left > right * 1.5


@pytest.mark.parametrize("resampler", ["swr", "soxr"])
def test_resampled_to_the_requested_rate(make_audio: MakeAudio, resampler: str) -> None:
    if resampler == "soxr" and not soxr_available():
        pytest.skip("this ffmpeg has no soxr")
    path = make_audio("hi.flac", seconds=2.0, rate=48000)
    assert probe(path).samplerate == 48000

    audio = decode_all(path, resampler=resampler)

    assert abs(audio.shape[1] - 2 * RATE) <= 2
    assert dominant_frequency(audio[0]) == pytest.approx(220, abs=1)


@pytest.mark.parametrize(
    ("name", "kwargs", "codec", "channels", "rate", "duration", "tolerance"),
    [
        ("p.wav", {}, "pcm_s16le", 2, 44100, 2.0, 0.001),
        ("p.flac", {"channels": 1, "rate": 48000}, "flac", 1, 48000, 2.0, 0.001),
        ("p.mp3", {"seconds": 3.0}, "mp3", 2, 44100, 3.0, 0.1),
        ("p.opus", {}, "opus", 2, 48000, 2.0, 0.05),
        ("p.m4a", {"channels": 6}, "aac", 6, 44100, 2.0, 0.05),
        ("p.mkv", {"video": True}, "vorbis", 2, 44100, 2.0, 0.05),
    ],
)
def test_probe_facts(
    make_audio: MakeAudio,
    name: str,
    kwargs: dict[str, object],
    codec: str,
    channels: int,
    rate: int,
    duration: float,
    tolerance: float,
) -> None:
    info = probe(make_audio(name, **kwargs))
    assert (info.codec, info.channels, info.samplerate) == (codec, channels, rate)
    assert info.duration_s == pytest.approx(duration, abs=tolerance)
    assert info.format_name


def test_probe_without_any_stored_duration(tmp_path: Path) -> None:
    # Written to a pipe, FLAC has no total in STREAMINFO and WebM no Duration element, as from
    # a browser's MediaRecorder.
    for name, muxer in [("piped.flac", "flac"), ("piped.webm", "webm")]:
        path = tmp_path / name
        source = ["-f", "lavfi", "-i", "sine=frequency=220:duration=3"]
        with path.open("wb") as out:
            cmd = ["ffmpeg", "-nostdin", "-v", "error", *source, "-f", muxer, "pipe:1"]
            subprocess.run(cmd, stdout=out, check=True)
        assert probe(path).duration_s == pytest.approx(3.0, abs=0.05)


def test_probe_ignores_a_duration_guessed_from_bitrate(tmp_path: Path) -> None:
    # VBR mp3 without a Xing header: ffprobe guesses the duration from the first (silent,
    # tiny) frames, far too long, which would make every decode look truncated.
    path = tmp_path / "vbr.mp3"
    ffmpeg(
        "-f", "lavfi", "-i", "anoisesrc=d=6:c=white:a=0.5",
        "-af", "volume=enable='lt(t,3)':volume=0",
        "-c:a", "libmp3lame", "-q:a", "2", "-write_xing", "0", str(path),
    )  # fmt: skip

    info = probe(path)

    assert info.duration_s == pytest.approx(6.0, abs=0.1)
    frames = sum(b.shape[1] for b in decode_checked(path, info=info, samplerate=RATE, channels=2))
    assert frames / RATE == pytest.approx(6.0, abs=0.1)


# --- errors ---------------------------------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp3"
    path.write_bytes(b"")
    with pytest.raises(InvalidAudioError, match=r"empty.mp3 is not an audio or video file"):
        probe(path)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.mp3"
    path.write_bytes(np.random.default_rng(1).bytes(20000))
    with pytest.raises(InvalidAudioError, match=r"noise.mp3 is not an audio or video file"):
        probe(path)


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "lyrics.wav"
    path.write_text("Yesterday, all my troubles seemed so far away\n" * 20)
    with pytest.raises(InvalidAudioError, match=r"lyrics.wav is not an audio or video file"):
        probe(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidAudioError, match=r"gone.wav does not exist"):
        probe(tmp_path / "gone.wav")
    with pytest.raises(InvalidAudioError, match=r"gone.wav does not exist"):
        decode_blocks(tmp_path / "gone.wav", samplerate=RATE, channels=2)


def test_video_without_audio(tmp_path: Path) -> None:
    path = tmp_path / "silent-film.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=5:duration=1", "-an", str(path))
    with pytest.raises(InvalidAudioError, match=r"silent-film.mp4 has no audio stream"):
        probe(path)


def test_zero_length_audio(tmp_path: Path) -> None:
    written_by_python = tmp_path / "nothing.wav"
    with wave.open(str(written_by_python), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(RATE)
    written_by_ffmpeg = tmp_path / "nothing.flac"
    ffmpeg("-f", "lavfi", "-i", "anullsrc", "-t", "0", str(written_by_ffmpeg))

    for path in (written_by_python, written_by_ffmpeg):
        with pytest.raises(InvalidAudioError, match=r"contains no audio samples"):
            probe(path)
        with pytest.raises(InvalidAudioError, match=r"contains no audio samples"):
            decode_all(path)


def truncate(path: Path) -> Path:
    cut = path.with_name("cut-" + path.name)
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    return cut


def test_truncated_flac(make_audio: MakeAudio) -> None:
    path = truncate(make_audio("song.flac", seconds=4.0))
    # STREAMINFO still promises the full length.
    info = probe(path)
    assert info.duration_s == pytest.approx(4.0)

    # ffmpeg logs a decode error at the cut but exits 0: the length gives it away.
    with pytest.raises(
        InvalidAudioError, match=r"cut-song.flac is truncated or corrupt: .* of 4.0 s"
    ):
        list(decode_checked(path, info=info, samplerate=RATE, channels=2))


def test_damaged_frames_in_the_middle_still_decode(make_audio: MakeAudio) -> None:
    path = make_audio("song.mp3", seconds=4.0)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 400] = bytes(400)  # a few frames of zeros, as a bad download has
    damaged = path.with_name("damaged.mp3")
    damaged.write_bytes(bytes(data))
    info = probe(damaged)
    blocks = list(decode_checked(damaged, info=info, samplerate=RATE, channels=2))
    assert sum(b.shape[1] for b in blocks) / RATE == pytest.approx(4.0, abs=0.2)


def test_truncated_mp3(make_audio: MakeAudio) -> None:
    path = truncate(make_audio("song.mp3", seconds=4.0))
    info = probe(path)

    # ffmpeg decodes the first half without a word: only the length gives it away.
    with pytest.raises(InvalidAudioError, match=r"cut-song.mp3 is truncated or corrupt: decoded"):
        list(decode_checked(path, info=info, samplerate=RATE, channels=2))


def test_truncated_m4a_is_unreadable(make_audio: MakeAudio) -> None:
    # ffmpeg writes the index (moov) at the end of an m4a, so half a file has none.
    path = truncate(make_audio("song.m4a", seconds=4.0))
    with pytest.raises(InvalidAudioError, match=r"is not an audio or video file"):
        probe(path)


def test_probe_timeout(make_audio: MakeAudio) -> None:
    path = make_audio("slow.wav")
    with pytest.raises(InvalidAudioError, match=r"slow.wav could not be read: ffprobe gave up"):
        probe(path, limits=MediaLimits(probe_timeout_s=0.001))


def test_missing_ffprobe_and_ffmpeg(
    make_audio: MakeAudio, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_audio("fine.wav")
    empty = tmp_path / "no-tools"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(ToolMissingError, match=r"ffprobe not found: install ffmpeg"):
        probe(path)
    with pytest.raises(ToolMissingError, match=r"ffmpeg not found: install ffmpeg"):
        list(decode_blocks(path, samplerate=RATE, channels=2, resampler="swr"))


# --- process hygiene ------------------------------------------------------------------------


def test_closing_the_generator_early_leaves_no_process(make_audio: MakeAudio) -> None:
    path = make_audio("long.flac", seconds=10.0)
    blocks = decode_blocks(path, samplerate=RATE, channels=2, block_frames=1024, resampler="swr")

    next(blocks)
    # 10 s of float32 stereo cannot fit in the pipe, so ffmpeg is still there, blocked.
    assert len(ffmpeg_children()) == 1
    blocks.close()

    assert ffmpeg_children() == []


def test_a_consumer_that_raises_leaves_no_process(make_audio: MakeAudio) -> None:
    path = make_audio("long.flac", seconds=10.0)
    info = probe(path)

    def consume() -> None:
        with contextlib.closing(decode_checked(path, info=info, samplerate=RATE, channels=2)) as it:
            for _ in it:
                assert len(ffmpeg_children()) == 1
                raise RuntimeError("the model crashed")

    with pytest.raises(RuntimeError, match=r"the model crashed"):
        consume()
    assert ffmpeg_children() == []


def test_checked_decode_of_a_whole_file_is_fine(make_audio: MakeAudio) -> None:
    path = make_audio("whole.mp3", seconds=3.0)
    info = probe(path)
    assert isinstance(info, AudioInfo)
    frames = sum(
        b.shape[1] for b in decode_blocks(path, samplerate=22050, channels=1, expected=info)
    )
    assert frames / 22050 == pytest.approx(3.0, abs=0.1)
    assert ffmpeg_children() == []
