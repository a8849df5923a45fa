"""separate_file, end to end: audio file in, stem files and a quality report out."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from demucs.api import Separator
from support.processes import ffmpeg_children

from stemify.audio import OutputFormat, decode_blocks, probe
from stemify.engine import (
    CancelToken,
    InferenceOptions,
    Progress,
    SeparationOptions,
    separate_file,
)
from stemify.errors import CanceledError, InvalidAudioError, InvalidOptionError
from stemify.models import load_model

pytestmark = pytest.mark.unit

RATE = 44100
MakeAudio = Callable[..., Path]


def read(path: Path) -> np.ndarray:
    return np.concatenate(list(decode_blocks(path, samplerate=RATE, channels=2)), axis=1)


def into(folder: Path, ext: str = "wav") -> Callable[[str], Path]:
    return lambda stem: folder / f"{stem}.{ext}"


def test_stems_have_the_input_length_and_a_quality_report(
    model_dir: Path, make_audio: MakeAudio, tmp_path: Path
) -> None:
    song = make_audio("song.flac", seconds=3.0)
    model = load_model("tiny", model_dir)
    seen: list[Progress] = []
    result = separate_file(
        song, model, into(tmp_path / "out"), SeparationOptions(), on_progress=seen.append
    )
    assert sorted(result.stems) == ["bass", "drums", "other", "vocals"]
    for path in result.stems.values():
        info = probe(path)
        assert (info.codec, info.channels, info.samplerate) == ("pcm_s16le", 2, RATE)
        assert read(path).shape == (2, 3 * RATE)
    assert result.samples == 3 * RATE
    assert result.info.codec == "flac"
    report = result.quality.to_dict()
    json.dumps(report, allow_nan=False)
    assert set(report["stems"]) == set(result.stems)
    assert report["mixture_snr_db"] is not None
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {p.stage for p in seen} == {"decoding", "separating", "encoding"}
    assert any(p.eta_s is not None for p in seen if p.stage == "separating")
    assert set(result.stage_seconds) == {"decoding", "separating", "encoding"}


def test_agrees_with_demucs_separator(
    model_dir: Path, make_audio: MakeAudio, tmp_path: Path
) -> None:
    """The whole pipeline (decode, normalise, stream, denormalise, encode) against demucs' API."""
    song = make_audio("song.wav", seconds=4.0)
    separator = Separator(model="tinybag", repo=model_dir, shifts=0, progress=False)
    _, expected = separator.separate_audio_file(song)
    options = SeparationOptions(
        inference=InferenceOptions(shifts=0),
        output=OutputFormat(container="wav", bit_depth=32),
        clip="none",
    )
    result = separate_file(song, load_model("tinybag", model_dir), into(tmp_path), options)
    for stem, reference in expected.items():
        ref = reference.numpy()
        got = read(result.stems[stem])
        sdr = 10 * np.log10((ref**2).sum() / ((ref - got) ** 2).sum())
        assert sdr >= 60, stem


def test_two_stem_mode(model_dir: Path, make_audio: MakeAudio, tmp_path: Path) -> None:
    song = make_audio("song.wav", seconds=2.0)
    options = SeparationOptions(
        inference=InferenceOptions(shifts=0),
        output=OutputFormat(bit_depth=32),
        clip="none",
        two_stems="vocals",
    )
    model = load_model("tiny", model_dir)
    two = separate_file(song, model, into(tmp_path / "two"), options)
    assert sorted(two.stems) == ["no_vocals", "vocals"]
    four = separate_file(
        song, model, into(tmp_path / "four"), SeparationOptions(
            inference=InferenceOptions(shifts=0), output=OutputFormat(bit_depth=32), clip="none"
        )
    )  # fmt: skip
    others = sum(read(four.stems[s]) for s in ("drums", "bass", "other"))
    np.testing.assert_allclose(read(two.stems["no_vocals"]), others, atol=1e-5)
    np.testing.assert_allclose(read(two.stems["vocals"]), read(four.stems["vocals"]), atol=1e-6)


def test_subset_of_stems_and_six_stem_model(
    model_dir: Path, make_audio: MakeAudio, tmp_path: Path
) -> None:
    song = make_audio("song.mp3", seconds=2.0)
    options = SeparationOptions(stems=("piano", "guitar"), output=OutputFormat(container="flac"))
    out = tmp_path / "out"
    result = separate_file(song, load_model("tiny6", model_dir), into(out, "flac"), options)
    assert sorted(result.stems) == ["guitar", "piano"]
    assert sorted(p.name for p in out.iterdir()) == ["guitar.flac", "piano.flac"]
    assert sorted(result.quality.stems) == ["bass", "drums", "guitar", "other", "piano", "vocals"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (SeparationOptions(two_stems="kazoo"), "unknown stem kazoo: this model has drums"),
        (SeparationOptions(stems=("vocals", "flute")), "unknown stem flute"),
        (SeparationOptions(stems=()), "empty"),
        (SeparationOptions(two_stems="vocals", stems=("bass",)), "not both"),
        (SeparationOptions(output=OutputFormat(container="flac", bit_depth=32)), "flac"),
        (SeparationOptions(inference=InferenceOptions(overlap=1.5)), "overlap"),
    ],
)
def test_bad_options_write_nothing(
    model_dir: Path, make_audio: MakeAudio, tmp_path: Path, options: SeparationOptions, message: str
) -> None:
    song = make_audio("song.wav", seconds=1.0)
    out = tmp_path / "out"
    with pytest.raises(InvalidOptionError, match=message):
        separate_file(song, load_model("tiny", model_dir), into(out), options)
    assert not out.exists()


def test_cancel_leaves_nothing(model_dir: Path, make_audio: MakeAudio, tmp_path: Path) -> None:
    song = make_audio("song.wav", seconds=6.0)
    token = CancelToken()
    stages: list[str] = []

    def on_progress(progress: Progress) -> None:
        stages.append(progress.stage)
        if progress.stage == "separating":
            token.cancel()

    out = tmp_path / "out"
    options = SeparationOptions(inference=InferenceOptions(shifts=0), clip="clamp")
    with pytest.raises(CanceledError):
        separate_file(
            song, load_model("tiny", model_dir), into(out), options,
            on_progress=on_progress, cancel=token,
        )  # fmt: skip
    assert stages.count("separating") == 1
    assert list(out.iterdir()) == []  # not even a temporary file
    assert not ffmpeg_children()


def test_bad_input_leaves_nothing(model_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "noise.mp3"
    bad.write_bytes(np.random.default_rng(0).bytes(5000))
    out = tmp_path / "out"
    with pytest.raises(InvalidAudioError, match=r"noise\.mp3 is not an audio or video file"):
        separate_file(bad, load_model("tiny", model_dir), into(out), SeparationOptions())
    assert not out.exists()
