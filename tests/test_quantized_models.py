"""Quantized models (mdx_q, mdx_extra_q): diffq-quantized checkpoints in demucs' own format,
loaded by the normal loader and run end to end. The weights are random (see stemify.testing)."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from demucs.apply import BagOfModels
from demucs.htdemucs import HTDemucs

from stemify.audio import decode_blocks, probe
from stemify.engine import InferenceOptions, SeparationOptions, separate_file
from stemify.errors import ModelLoadError
from stemify.models import load_model, official_catalogue
from stemify.testing.random_models import (
    QUANT_MIN_SIZE_MB,
    SOURCES,
    TINY_KWARGS,
    build_htdemucs,
    make_quantized_official_repo,
    quantized_weight_bytes,
    save_bag,
    save_model,
    save_quantized_model,
)

LOW_BITS, HIGH_BITS = 4, 6
RATE = 44100
MakeAudio = Callable[..., Path]
pytestmark = pytest.mark.unit
# Parameters above diffq's min_size are quantized; the rest are stored as float32.
MIN_PARAMS = int(QUANT_MIN_SIZE_MB * 2**20 // 4)


def _load_package(path: Path) -> dict[str, Any]:
    package: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return package


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    """Bag ``tinyq``: one tiny HTDemucs saved quantized; also the float16 file of the same model,
    for comparison, and the original float32 weights."""
    directory = tmp_path_factory.mktemp("quantized")
    model = build_htdemucs(7, **TINY_KWARGS)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    path = save_quantized_model(model, directory, "qqqq0001", bits=(LOW_BITS, HIGH_BITS))
    # Saving leaves the model as it was: no diffq parameters or hooks, same weights.
    assert model.state_dict().keys() == original.keys()
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    save_bag(directory, "tinyq", ["qqqq0001"])
    half = save_model(model, directory / "float", "ffff0001")
    return path, half, original


def test_checkpoint_is_a_bit_packed_diffq_state_in_demucs_format(
    quantized: tuple[Path, Path, dict[str, Any]],
) -> None:
    import diffq

    path, half, original = quantized
    data = path.read_bytes()
    assert path.name == f"qqqq0001-{hashlib.sha256(data).hexdigest()[:8]}.th"
    package = _load_package(path)
    assert set(package) == {"klass", "args", "kwargs", "state", "training_args"}
    assert package["klass"] is HTDemucs
    assert package["kwargs"]["sources"] == SOURCES
    state = package["state"]
    assert state["__quantized"] is True
    assert state["meta"]["klass"] is diffq.DiffQuantizer
    assert state["meta"]["packed"] is True and state["meta"]["torch_pack"] is False
    # Not a state dict: no parameter names, one packed entry per quantized parameter.
    assert not any(key in state for key in original)
    n_quantized = sum(1 for v in original.values() if v.numel() > MIN_PARAMS)
    assert len(state["quantized"]) == n_quantized > 40
    # 4 to 6 bits per weight for 98 % of the weights: far below demucs' float16 release format.
    model = build_htdemucs(7, **TINY_KWARGS)
    assert quantized_weight_bytes(model) > 0.95 * 4 * sum(p.numel() for p in model.parameters())
    assert len(data) < 0.7 * half.stat().st_size


def test_loader_restores_the_quantized_weights(
    quantized: tuple[Path, Path, dict[str, Any]],
) -> None:
    path, _, original = quantized
    bag = load_model("tinyq", path.parent)
    assert isinstance(bag, BagOfModels)
    (model,) = bag.models
    assert isinstance(model, HTDemucs) and not model.training
    state = model.state_dict()
    # diffq's quantizer was detached after restoring: a plain HTDemucs, nothing extra.
    assert state.keys() == original.keys()
    assert not [name for name, _ in model.named_parameters() if name.endswith("_diffq")]
    checked = 0
    for key, value in state.items():
        before = original[key]
        if value.numel() <= MIN_PARAMS or not value.is_floating_point():
            # Small parameters (and buffers) are kept exactly.
            assert torch.equal(value, before), key
            continue
        error = (value - before).abs().max().item()
        # Every weight moved onto its group's grid: within half a step of the coarsest width...
        half_step = (before.max() - before.min()).item() / (2**LOW_BITS - 1) / 2
        assert 0 < error <= half_step * 1.001, key
        # ...and a tensor takes at most the levels of the widths used (16 + 32 + 64).
        levels = sum(2**b for b in range(LOW_BITS, HIGH_BITS + 1))
        assert value.unique().numel() <= levels < before.unique().numel(), key
        checked += 1
    assert checked > 40


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[Path]]]:
    """Random quantized stand-ins for mdx_q and mdx_extra_q (4 tiny HTDemucs each)."""
    directory = tmp_path_factory.mktemp("official")
    return directory, {
        name: make_quantized_official_repo(directory, name) for name in ("mdx_q", "mdx_extra_q")
    }


@pytest.mark.parametrize("name", ["mdx_q", "mdx_extra_q"])
def test_official_quantized_bags_load(
    name: str, official: tuple[Path, dict[str, list[Path]]]
) -> None:
    directory, written = official
    paths = written[name]
    entry = official_catalogue()[name]
    assert entry.needs_diffq
    assert [p.name.split("-")[0] for p in paths] == [f.signature for f in entry.files]
    assert (directory / f"{name}.yaml").read_text() == entry.bag_yaml
    for path in paths:
        assert _load_package(path)["state"]["__quantized"] is True
    bag = load_model(name, directory)
    assert isinstance(bag, BagOfModels) and len(bag.models) == len(entry.files) == 4
    assert list(bag.sources) == list(entry.sources)
    assert all(isinstance(m, HTDemucs) for m in bag.models)


def test_mdx_q_separates_a_file_end_to_end(
    official: tuple[Path, dict[str, list[Path]]], tmp_path: Path, make_audio: MakeAudio
) -> None:
    entry = official_catalogue()["mdx_q"]
    bag = load_model("mdx_q", official[0])
    song = make_audio("song.flac", seconds=1.0)  # two segments per model
    options = SeparationOptions(inference=InferenceOptions(shifts=0))
    result = separate_file(song, bag, lambda stem: tmp_path / "out" / f"{stem}.wav", options)
    assert sorted(result.stems) == sorted(entry.sources)
    assert result.samples == RATE
    for stem, path in result.stems.items():
        info = probe(path)
        assert (info.channels, info.samplerate) == (2, RATE)
        audio = np.concatenate(list(decode_blocks(path, samplerate=RATE, channels=2)), axis=1)
        assert audio.shape == (2, RATE), stem
        assert np.isfinite(audio).all() and np.abs(audio).max() > 1e-3, stem


def test_without_diffq_an_installed_quantized_model_is_refused_clearly(
    official: tuple[Path, dict[str, list[Path]]],
    quantized: tuple[Path, Path, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if diffq were not installed: find_spec answers None and every import of it fails.
    for module in [m for m in sys.modules if m == "diffq" or m.startswith("diffq.")]:
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setitem(sys.modules, "diffq", None)
    with pytest.raises(ModelLoadError, match=r"requires diffq.*pip install diffq-fixed"):
        load_model("mdx_q", official[0])
    # A local bag is not known to be quantized until its pickle names diffq's quantizer; demucs
    # then calls fatal() (sys.exit), which must not end the process.
    with pytest.raises(ModelLoadError, match=r"demucs gave up.*pip install diffq-fixed"):
        load_model("tinyq", quantized[0].parent)
