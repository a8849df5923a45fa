"""`stemify mix DIR --gain STEM=GAIN -o out.wav`: exact sums of real ffmpeg-made stems, every
mistake a clear error that writes nothing, and no torch on the way."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from support.processes import STEMIFY
from test_cli_startup import _heavy_imports, run_cli

from stemify.audio import decode_blocks
from stemify.audio.mix import find_stems, mix_stems, parse_gains

pytestmark = pytest.mark.unit

# One 16-bit step: the mix is quantised once more than its (already 16-bit) stems.
STEP = 1 / 32768


def tone(path: Path, frequency: int, seconds: float = 1.0, rate: int = 44100) -> Path:
    source = f"sine=frequency={frequency}:sample_rate={rate}:duration={seconds},volume=0.25"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", source, "-ac", "2",
         "-c:a", "pcm_s16le", str(path)],
        check=True,
    )  # fmt: skip
    return path


def samples(path: Path, rate: int = 44100) -> npt.NDArray[np.float32]:
    return np.concatenate(list(decode_blocks(path, samplerate=rate, channels=2)), axis=1)


@pytest.fixture
def stems(tmp_path: Path) -> Path:
    directory = tmp_path / "song"
    directory.mkdir()
    for name, frequency in (("vocals", 440), ("drums", 110), ("bass", 55), ("other", 880)):
        tone(directory / f"{name}.wav", frequency)
    return directory


def stemify(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STEMIFY, *map(str, args)], capture_output=True, text=True, timeout=120)


def test_the_mix_is_the_sum_of_the_stems_at_their_gains(stems: Path, tmp_path: Path) -> None:
    out = tmp_path / "karaoke.wav"
    done = stemify("mix", stems, "--gain", "vocals=0", "--gain", "drums=0.5", "-o", out)
    assert done.returncode == 0, done.stderr
    assert "vocals x0" in done.stdout and "drums x0.5" in done.stdout
    expected = 0.5 * samples(stems / "drums.wav") + samples(stems / "bass.wav")
    expected += samples(stems / "other.wav")
    mixed = samples(out)
    assert mixed.shape == expected.shape
    assert np.abs(mixed - expected).max() <= STEP
    # Not silence, and not the vocals' level: the muted stem really is out.
    vocals = samples(stems / "vocals.wav")
    assert np.abs(mixed).max() > 0.02
    assert np.abs(mixed - (expected + vocals)).max() > 0.02


def test_without_gains_every_stem_counts_once(stems: Path, tmp_path: Path) -> None:
    found = find_stems(stems)
    assert sorted(found) == ["bass", "drums", "other", "vocals"]
    out = mix_stems(found, parse_gains([], found), tmp_path / "all.flac", clip="none")
    total = sum(samples(path) for path in found.values())
    assert np.abs(samples(out) - total).max() <= STEP


def test_mixing_imports_no_torch(stems: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.wav"
    output, result = run_cli(
        ["mix", str(stems), "--gain", "vocals=0", "-o", str(out)], tmp_path, tmp_path
    )
    assert "wrote" in output and out.is_file()
    assert _heavy_imports(result) == {}


def test_an_output_inside_the_stem_directory_is_not_a_stem(stems: Path) -> None:
    out = stems / "mix.wav"
    assert stemify("mix", stems, "-o", out).returncode == 0
    assert stemify("mix", stems, "-o", out).returncode == 0  # run again: mix.wav is skipped
    assert "mix" not in find_stems(stems, exclude=out)


@pytest.mark.parametrize(
    ("gain", "message"),
    [
        ("guitar=0", "no stem 'guitar' here; the stems are bass, drums, other, vocals"),
        ("vocals", "write STEM=GAIN"),
        ("=0", "write STEM=GAIN"),
        ("vocals=loud", "'loud' is not a number"),
        ("vocals=-1", "a gain is a number from 0 up"),
        ("vocals=nan", "a gain is a number from 0 up"),
    ],
)
def test_bad_gains_are_named(stems: Path, tmp_path: Path, gain: str, message: str) -> None:
    out = tmp_path / "out.wav"
    done = stemify("mix", stems, "--gain", gain, "-o", out)
    assert done.returncode == 1
    assert message in done.stderr and done.stderr.startswith("stemify: error:")
    assert not out.exists()


def test_stems_of_different_lengths_are_refused(stems: Path, tmp_path: Path) -> None:
    tone(stems / "drums.wav", 110, seconds=2.0)
    out = tmp_path / "out.wav"
    done = stemify("mix", stems, "-o", out)
    assert done.returncode == 1
    assert "the stems differ in length" in done.stderr and "drums 88200 samples" in done.stderr
    assert not out.exists() and list(tmp_path.glob(".out.wav*")) == []


def test_stems_of_different_rates_are_refused(stems: Path, tmp_path: Path) -> None:
    tone(stems / "drums.wav", 110, rate=48000)
    done = stemify("mix", stems, "-o", tmp_path / "out.wav")
    assert done.returncode == 1
    assert "different sample rates" in done.stderr and "drums 48000 Hz" in done.stderr


def test_a_directory_without_stems(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not audio")
    done = stemify("mix", tmp_path / "empty", "-o", tmp_path / "out.wav")
    assert done.returncode == 1 and "stem directory has no audio files" in done.stderr
    done = stemify("mix", tmp_path / "nowhere", "-o", tmp_path / "out.wav")
    assert done.returncode == 1 and "stem directory not found" in done.stderr


def test_two_files_for_one_stem(stems: Path, tmp_path: Path) -> None:
    (stems / "vocals.mp3").write_bytes((stems / "vocals.wav").read_bytes())
    done = stemify("mix", stems, "-o", tmp_path / "out.wav")
    assert done.returncode == 1
    assert "has two files for stem 'vocals'" in done.stderr


def test_an_unknown_output_format(stems: Path, tmp_path: Path) -> None:
    done = stemify("mix", stems, "-o", tmp_path / "out.ogg")
    assert done.returncode == 1 and "end the name with .wav, .flac or .mp3" in done.stderr
