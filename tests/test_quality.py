"""Quality report (streaming loudness, levels, stem consistency) and ``evaluate_dirs``."""

from __future__ import annotations

import json
import math
import subprocess
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyloudnorm
import pytest
import scipy.signal

from stemify.errors import InvalidAudioError, InvalidOptionError
from stemify.quality import (
    SNR_CAP_DB,
    ConsistencyMeter,
    LoudnessMeter,
    QualityAccumulator,
    StemMeter,
    evaluate_dirs,
)

pytestmark = pytest.mark.unit

Audio = npt.NDArray[np.float32]


def random_splits(n: int, seed: int, largest: int = 30000) -> list[tuple[int, int]]:
    """Random block boundaries covering ``range(n)``, including some 1-sample blocks."""
    rng = np.random.default_rng(seed)
    bounds, position = [], 0
    while position < n:
        size = 1 if rng.random() < 0.1 else int(rng.integers(1, largest))
        bounds.append((position, min(n, position + size)))
        position += size
    return bounds


def signal(kind: str, channels: int, rate: int, seconds: float, seed: int = 0) -> Audio:
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    b, a = scipy.signal.butter(2, 3000, fs=rate)
    noise = scipy.signal.lfilter(b, a, rng.standard_normal((channels, n)), axis=-1)
    music = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * noise
    if kind == "quiet":  # about -60 LUFS: above the absolute gate, far below music
        x = 0.002 * music
    elif kind == "loud":
        x = np.clip(3.0 * music, -1.0, 1.0)
    elif kind == "gated":  # loud, then a long quiet tail the relative gate must drop
        x = music * np.where(t < seconds / 3, 1.0, 0.003)
    else:
        x = music
    return np.asarray(x, dtype=np.float32)


def reference_lufs(x: Audio, rate: int) -> float:
    return float(pyloudnorm.Meter(rate).integrated_loudness(x.T.astype(np.float64)))


@pytest.mark.parametrize("rate", [44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("kind", ["music", "quiet", "loud", "gated"])
def test_loudness_agrees_with_pyloudnorm(kind: str, channels: int, rate: int) -> None:
    x = signal(kind, channels, rate, seconds=2.73, seed=channels)
    meter = LoudnessMeter(rate)
    for start, end in random_splits(x.shape[1], seed=rate + channels):
        meter.update(x[:, start:end])
    expected = reference_lufs(x, rate)
    assert math.isfinite(expected)
    assert meter.integrated_lufs() == pytest.approx(expected, abs=0.1)
    assert meter.integrated_lufs_or_none() == pytest.approx(expected, abs=0.1)


def test_loudness_does_not_depend_on_block_size() -> None:
    x = signal("gated", 2, 44100, seconds=3.0)
    whole = LoudnessMeter(44100)
    whole.update(x)
    split = LoudnessMeter(44100)
    for start, end in random_splits(x.shape[1], seed=7, largest=500):
        split.update(x[:, start:end])
    assert split.integrated_lufs() == pytest.approx(whole.integrated_lufs(), abs=1e-6)


def test_loudness_not_measurable() -> None:
    short = LoudnessMeter(44100)
    short.update(signal("music", 2, 44100, seconds=0.39))
    assert short.integrated_lufs() == -math.inf
    assert short.integrated_lufs_or_none() is None

    silent = LoudnessMeter(48000)
    silent.update(np.zeros((2, 48000 * 2), dtype=np.float32))
    assert silent.integrated_lufs() == -math.inf
    assert silent.integrated_lufs_or_none() is None

    assert LoudnessMeter(44100).integrated_lufs_or_none() is None


def test_loudness_rejects_changing_channel_count() -> None:
    meter = LoudnessMeter(44100)
    meter.update(np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(ValueError, match="channels"):
        meter.update(np.zeros((1, 100), dtype=np.float32))


def test_stem_meter_levels_of_a_sine() -> None:
    rate = 44100
    t = np.arange(rate * 2) / rate
    # 441 Hz: exactly 100 samples per period, so the peak sample is the crest and the RMS is exact.
    sine = (0.5 * np.sin(2 * np.pi * 441 * t)).astype(np.float32)
    meter = StemMeter(rate)
    for start, end in random_splits(sine.size, seed=3):
        meter.update(np.stack([sine[start:end], sine[start:end]]))
    quality = meter.result()
    assert quality.peak_dbfs == pytest.approx(-6.02, abs=0.01)
    assert quality.rms_dbfs == pytest.approx(-9.03, abs=0.01)
    assert quality.lufs is not None and -15.0 < quality.lufs < -5.0
    assert quality.clipped_fraction == 0.0


def test_stem_meter_clipped_fraction_is_exact() -> None:
    block = np.full((2, 1000), 0.1, dtype=np.float32)
    block[0, [3, 500, 999]] = [1.0, -1.0, 1.5]
    block[1, [0, 10, 20, 30]] = [-2.0, 0.99999, 1.0, -1.0]  # 0.99999 does not count
    meter = StemMeter(44100)
    meter.update(block[:, :400])
    meter.update(block[:, 400:])
    assert meter.result().clipped_fraction == 6 / 2000


def test_stem_meter_silence() -> None:
    meter = StemMeter(44100)
    meter.update(np.zeros((2, 44100), dtype=np.float32))
    quality = meter.result()
    assert (quality.peak_dbfs, quality.rms_dbfs, quality.lufs) == (None, None, None)
    assert quality.clipped_fraction == 0.0
    empty = StemMeter(44100).result()
    assert (empty.peak_dbfs, empty.rms_dbfs, empty.lufs) == (None, None, None)


def test_consistency_perfect_reconstruction_is_capped() -> None:
    mix = signal("music", 2, 44100, seconds=1.0)
    meter = ConsistencyMeter()
    meter.update(mix, mix.copy())
    assert meter.snr_db() == SNR_CAP_DB


def test_consistency_known_noise_level() -> None:
    rng = np.random.default_rng(5)
    mix = signal("music", 2, 44100, seconds=2.0).astype(np.float64)
    noise = rng.standard_normal(mix.shape)
    noise *= math.sqrt(np.sum(mix**2) / np.sum(noise**2) / 10 ** (23.5 / 10))
    stems_sum = (mix + noise).astype(np.float32)
    meter = ConsistencyMeter()
    for start, end in random_splits(mix.shape[1], seed=5):
        meter.update(mix[:, start:end].astype(np.float32), stems_sum[:, start:end])
    assert meter.snr_db() == pytest.approx(23.5, abs=0.1)


def test_consistency_silent_mix() -> None:
    meter = ConsistencyMeter()
    meter.update(np.zeros((2, 100), dtype=np.float32), np.ones((2, 100), dtype=np.float32))
    assert meter.snr_db() is None


def test_accumulator_report_is_json_ready() -> None:
    rate = 44100
    drums = signal("loud", 2, rate, seconds=1.5, seed=1)
    bass = signal("music", 2, rate, seconds=1.5, seed=2)
    silent = np.zeros_like(drums)
    stems = np.stack([drums, bass, silent])
    mix = stems.sum(axis=0, dtype=np.float32)
    accumulator = QualityAccumulator(["drums", "bass", "vocals"], rate)
    for start, end in random_splits(mix.shape[1], seed=11):
        accumulator.update(mix[:, start:end], stems[:, :, start:end])
    report = accumulator.report()

    assert list(report.stems) == ["drums", "bass", "vocals"]
    assert report.stems["drums"].clipped_fraction > 0.0
    assert report.stems["vocals"].lufs is None
    assert report.mixture_snr_db is not None and report.mixture_snr_db > 100.0

    data = report.to_dict()
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text) == data
    assert data["stems"]["vocals"] == {
        "peak_dbfs": None,
        "rms_dbfs": None,
        "lufs": None,
        "clipped_fraction": 0.0,
    }
    assert data["stems"]["bass"]["lufs"] == round(data["stems"]["bass"]["lufs"], 2)


def test_accumulator_rejects_wrong_stem_count() -> None:
    accumulator = QualityAccumulator(["a", "b"], 44100)
    with pytest.raises(ValueError, match="stems block"):
        accumulator.update(np.zeros((2, 10), np.float32), np.zeros((3, 2, 10), np.float32))


# --- evaluate_dirs -------------------------------------------------------------------------

RATE = 44100


def write_wav(path: Path, audio: npt.NDArray[np.floating], rate: int = RATE) -> Path:
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(audio.shape[0])
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.T.tobytes())
    return path


def with_noise(reference: Audio, snr_db: float, seed: int) -> Audio:
    """``reference`` plus white noise at exactly ``snr_db`` in every channel."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(reference.shape)
    power = np.sum(reference.astype(np.float64) ** 2, axis=1, keepdims=True)
    noise *= np.sqrt(power / np.sum(noise**2, axis=1, keepdims=True) / 10 ** (snr_db / 10))
    return (reference + noise).astype(np.float32)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    ref, est = tmp_path / "ref", tmp_path / "est"
    ref.mkdir()
    est.mkdir()
    return ref, est


def test_evaluate_scores_match_known_noise(dirs: tuple[Path, Path]) -> None:
    ref, est = dirs
    vocals = signal("music", 2, RATE, seconds=2.0, seed=1)
    drums = signal("music", 2, RATE, seconds=2.0, seed=2)
    write_wav(ref / "vocals.wav", vocals)
    write_wav(ref / "drums.wav", drums)
    write_wav(est / "vocals.wav", with_noise(vocals, 10.0, seed=3))
    write_wav(est / "drums.wav", with_noise(drums, 20.0, seed=4))

    result = evaluate_dirs(ref, est)

    assert list(result.stems) == ["drums", "vocals"]
    for name, snr in (("vocals", 10.0), ("drums", 20.0)):
        score = result.stems[name]
        assert score.sdr_db == pytest.approx(snr, abs=0.5)
        assert score.si_sdr_db == pytest.approx(snr, abs=0.5)
    assert result.mean_sdr_db == pytest.approx(15.0, abs=0.5)
    assert result.warnings == []

    data = result.to_dict()
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    table = result.format_table().splitlines()
    assert table[0].split() == ["stem", "SDR", "(dB)", "SI-SDR", "(dB)"]
    assert [line.split()[0] for line in table if line[0].isalpha()][1:] == [
        "drums",
        "vocals",
        "mean",
    ]
    assert len({len(line) for line in table}) == 1  # aligned columns


def test_evaluate_identical_files_and_flac_estimate(dirs: tuple[Path, Path]) -> None:
    ref, est = dirs
    bass = signal("music", 2, RATE, seconds=2.0, seed=5)
    other = signal("music", 2, RATE, seconds=2.0, seed=6)
    write_wav(ref / "bass.wav", bass)
    write_wav(est / "bass.wav", bass)
    write_wav(ref / "other.wav", other)
    noisy = write_wav(ref.parent / "other_noisy.wav", with_noise(other, 12.0, seed=7))
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(noisy), str(est / "other.flac")],
        check=True,
    )

    result = evaluate_dirs(ref, est)

    bass_score, other_score = result.stems["bass"], result.stems["other"]
    assert bass_score.sdr_db is not None and bass_score.sdr_db > 90.0
    assert bass_score.si_sdr_db is not None and bass_score.si_sdr_db > 90.0
    assert other_score.sdr_db == pytest.approx(12.0, abs=0.5)
    assert other_score.si_sdr_db == pytest.approx(12.0, abs=0.5)


def test_evaluate_warnings(dirs: tuple[Path, Path]) -> None:
    ref, est = dirs
    vocals = signal("music", 2, RATE, seconds=2.0, seed=8)
    write_wav(ref / "vocals.wav", vocals)
    write_wav(est / "vocals.wav", vocals[:, : int(1.5 * RATE)])
    write_wav(ref / "mixture.wav", vocals)
    write_wav(ref / "piano.wav", np.zeros_like(vocals))
    write_wav(est / "piano.wav", vocals)
    write_wav(est / "guitar.wav", vocals)
    (est / "notes.txt").write_text("not audio, ignored")

    result = evaluate_dirs(ref, est)

    assert list(result.stems) == ["piano", "vocals"]
    assert result.stems["piano"].sdr_db is None
    assert result.mean_sdr_db == result.stems["vocals"].sdr_db
    text = "\n".join(result.warnings)
    assert "no estimate for reference stems: mixture" in text
    assert "no reference for estimated stems: guitar" in text
    assert "vocals: reference and estimate lengths differ by 0.50 s" in text
    assert "piano: reference is silent" in text
    assert "n/a" in result.format_table()
    assert result.to_dict()["stems"]["piano"] == {"sdr_db": None, "si_sdr_db": None}


def test_evaluate_errors(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    ref, est = dirs
    with pytest.raises(InvalidOptionError, match="reference directory not found"):
        evaluate_dirs(tmp_path / "nope", est)
    with pytest.raises(InvalidOptionError, match="estimate directory has no audio files"):
        write_wav(ref / "vocals.wav", signal("music", 2, RATE, seconds=1.5))
        evaluate_dirs(ref, est)

    write_wav(est / "drums.wav", signal("music", 2, RATE, seconds=1.5))
    with pytest.raises(InvalidOptionError, match="no stem names in common") as caught:
        evaluate_dirs(ref, est)
    assert "vocals" in caught.value.message and "drums" in caught.value.message

    (est / "vocals.wav").write_bytes(b"RIFF this is not a wav file")
    with pytest.raises(InvalidAudioError, match=r"could not decode vocals\.wav: Invalid data"):
        evaluate_dirs(ref, est)

    write_wav(est / "vocals.wav", signal("music", 2, RATE, seconds=1.5))
    write_wav(est / "vocals.flac", signal("music", 2, RATE, seconds=1.5))
    with pytest.raises(InvalidOptionError, match="two files for stem 'vocals'"):
        evaluate_dirs(ref, est)
