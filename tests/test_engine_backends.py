"""The onnx backend: stems as demucs computes them (the segment-level agreement on both
backends is in test_engine_agreement), its export cache, and its fallbacks to torch (an
architecture it cannot take, a bad export, nowhere to write one)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from demucs.apply import apply_model
from test_engine_agreement import mix, sdr_db, streamed

from stemify.engine import InferenceOptions, SeparationOptions, separate_file
from stemify.engine.backends.choose import LoadedModel, load_engine_model
from stemify.engine.backends.onnx_export import EXPORTER_VERSION, export_name
from stemify.errors import BackendUnavailableError
from stemify.models import ModelCache, model_nbytes
from stemify.models.pull import sha256_file
from stemify.testing.random_models import (
    TINY_KWARGS,
    build_hdemucs,
    build_htdemucs,
    make_quantized_official_repo,
    save_bag,
    save_model,
)

pytestmark = pytest.mark.unit

LOG = "stemify.engine.backends.choose"


@pytest.fixture(scope="module")
def onnx_models(model_dir: Path) -> Iterator[dict[str, LoadedModel]]:
    yield {
        name: load_engine_model(name, model_dir, backend="onnx")
        for name in ("tiny", "tinybag", "tiny6")
    }


def own_repo(directory: Path, seed: int = 1) -> Path:
    """A model directory of its own with one tiny HTDemucs ``solo``, for cache tests."""
    save_model(build_htdemucs(seed, **TINY_KWARGS), directory, "cccc0001")
    save_bag(directory, "solo", ["cccc0001"])
    return directory


def exports(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.onnx"))


# ---- agreement with demucs ----------------------------------------------------------------------


def test_two_stem_files_agree_with_demucs(
    onnx_models: dict[str, LoadedModel], make_audio: Any, tmp_path: Path
) -> None:
    """File to float32 stems: ``vocals`` and ``no_vocals`` as demucs computes them."""
    from stemify.audio import OutputFormat, decode_blocks

    loaded = onnx_models["tiny"]
    song = make_audio("song.wav", seconds=3.0)
    options = SeparationOptions(
        inference=InferenceOptions(shifts=0),
        output=OutputFormat(container="wav", bit_depth=32),
        clip="none",
        two_stems="vocals",
    )
    result = separate_file(
        song, loaded.model, lambda s: tmp_path / f"{s}.wav", options, backend=loaded.backend
    )
    wav = torch.from_numpy(
        np.concatenate(list(decode_blocks(song, samplerate=44100, channels=2)), 1)
    )
    ref = wav.mean(0)
    normalised = (wav - ref.mean()) / (ref.std() + 1e-8)
    sources = apply_model(loaded.model, normalised[None], shifts=0)[0]
    sources = sources * (ref.std() + 1e-8) + ref.mean()
    vocals = sources[3].numpy()
    no_vocals = sources[:3].sum(0).numpy()
    for stem, expected in (("vocals", vocals), ("no_vocals", no_vocals)):
        got = np.concatenate(
            list(decode_blocks(result.stems[stem], samplerate=44100, channels=2)), 1
        )
        assert sdr_db(expected, got) >= 60, stem


def test_cache_budget_counts_the_runtime_sessions(onnx_models: dict[str, LoadedModel]) -> None:
    loaded = onnx_models["tinybag"]
    assert loaded.backend.memory_bytes() > 0
    assert loaded.memory_bytes() == model_nbytes(loaded.model) + loaded.backend.memory_bytes()
    cache = ModelCache(lambda name: onnx_models[name], budget_bytes=1 << 30)
    cache.get("tinybag")
    assert cache.stats.bytes == loaded.memory_bytes()


# ---- the export cache ---------------------------------------------------------------------------


def test_export_is_written_once_and_reused_by_another_process(tmp_path: Path) -> None:
    directory = own_repo(tmp_path / "models")
    load = (
        "import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout);"
        "from pathlib import Path; from stemify.engine.backends.choose import load_engine_model;"
        f"print(load_engine_model('solo', Path({str(directory)!r})).backend.name)"
    )
    env = dict(os.environ)  # PYTHONPATH included: the child loads this tree's code

    def child() -> str:
        done = subprocess.run(
            [sys.executable, "-c", load], env=env, capture_output=True, text=True, check=True
        )
        return done.stdout

    first = child()
    assert first.strip().endswith("onnx") and "exporting the network core" in first
    (name,) = exports(directory)
    checkpoint = next(directory.glob("cccc0001-*.th"))
    assert name == export_name(sha256_file(checkpoint)) and EXPORTER_VERSION in name
    written = (directory / name).stat().st_mtime_ns
    second = child()
    assert second.strip().endswith("onnx") and "exporting" not in second
    assert (directory / name).stat().st_mtime_ns == written


def test_a_changed_checkpoint_gets_a_new_export(tmp_path: Path) -> None:
    directory = own_repo(tmp_path / "models", seed=1)
    load_engine_model("solo", directory)
    (old,) = exports(directory)
    for path in directory.glob("cccc0001-*.th"):
        path.unlink()
    save_model(build_htdemucs(2, **TINY_KWARGS), directory, "cccc0001")  # new weights
    loaded = load_engine_model("solo", directory)
    assert loaded.backend.name == "onnx"
    new = set(exports(directory)) - {old}
    checkpoint = next(directory.glob("cccc0001-*.th"))
    assert new == {export_name(sha256_file(checkpoint))}


def test_a_corrupt_export_is_detected_and_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = own_repo(tmp_path / "models")
    load_engine_model("solo", directory)
    (name,) = exports(directory)
    path = directory / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte deep in the weights: still loads
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.INFO, logger=LOG):
        loaded = load_engine_model("solo", directory)
    assert loaded.backend.name == "onnx"
    assert f"the export {path} of model solo is corrupt: rebuilding it" in caplog.text
    assert "exporting the network core of model solo" in caplog.text
    assert (path.with_name(name + ".sha256")).read_text().strip() == sha256_file(path)


def test_an_export_onnxruntime_refuses_runs_on_torch_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not an ONNX file, though its digest matches (written by something else than stemify)."""
    directory = own_repo(tmp_path / "models")
    checkpoint = next(directory.glob("cccc0001-*.th"))
    path = directory / export_name(sha256_file(checkpoint))
    path.write_bytes(b"not a model")
    path.with_name(path.name + ".sha256").write_text(sha256_file(path))
    with caplog.at_level(logging.WARNING, logger=LOG):
        assert load_engine_model("solo", directory).backend.name == "torch"
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("model solo runs on torch: its onnx export failed (")
    with pytest.raises(BackendUnavailableError, match="model 'solo' cannot run on the onnx"):
        load_engine_model("solo", directory, backend="onnx")


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Any]:
    """Makes a directory read-only for real: a read-only bind mount as root (who writes through
    permissions), its permissions otherwise."""
    mounted: list[Path] = []

    def make(directory: Path) -> Path:
        if os.geteuid() == 0:
            subprocess.run(["mount", "--bind", directory, directory], check=True)
            mounted.append(directory)
            subprocess.run(["mount", "-o", "remount,ro,bind", directory, directory], check=True)
        else:
            directory.chmod(0o555)
        return directory

    yield make
    for directory in mounted:
        subprocess.run(["umount", directory], check=True)


def test_a_read_only_model_directory_exports_into_the_cache(
    tmp_path: Path, read_only: Any, caplog: pytest.LogCaptureFixture
) -> None:
    directory = read_only(own_repo(tmp_path / "models"))
    cache = tmp_path / "exports"
    with caplog.at_level(logging.WARNING, logger=LOG):
        loaded = load_engine_model("solo", directory, export_dir=cache)
    assert loaded.backend.name == "onnx"
    assert exports(directory) == [] and len(exports(cache)) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"model directory {directory} is not writable: the export of model solo goes to "
        f"{cache} (STEMIFY_EXPORT_DIR)"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOG):
        assert load_engine_model("solo", directory, export_dir=cache).backend.name == "onnx"
    assert caplog.records == []  # found in the cache: nothing to say


def test_nowhere_to_write_an_export_runs_on_torch_with_one_warning(
    tmp_path: Path, read_only: Any, caplog: pytest.LogCaptureFixture
) -> None:
    directory = read_only(own_repo(tmp_path / "models"))
    cache = tmp_path / "exports"
    cache.mkdir()
    read_only(cache)
    with caplog.at_level(logging.WARNING, logger=LOG):
        loaded = load_engine_model("solo", directory, export_dir=cache)
    assert loaded.backend.name == "torch"
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("model solo runs on torch: neither the model directory")


def test_an_export_that_fails_its_check_is_discarded_for_torch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = own_repo(tmp_path / "models")
    with caplog.at_level(logging.WARNING, logger=LOG):
        # No float32 export agrees to 400 dB: the real check, failing for real.
        loaded = load_engine_model("solo", directory, min_agreement_db=400.0)
    assert loaded.backend.name == "torch"
    assert exports(directory) == []
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "model solo runs on torch: its onnx export agrees with PyTorch to" in warning
    assert "the export was discarded" in warning


# ---- what the runtime does not take -------------------------------------------------------------


@pytest.fixture(scope="module")
def hybrid_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("hybrid")
    save_model(build_hdemucs(5), directory, "dddd0001")
    save_bag(directory, "hybrid", ["dddd0001"])
    make_quantized_official_repo(directory, "mdx_q")
    return directory


def test_an_hdemucs_model_separates_on_torch(hybrid_dir: Path) -> None:
    loaded = load_engine_model("hybrid", hybrid_dir)
    assert loaded.backend.name == "torch"
    assert exports(hybrid_dir) == []
    x = mix(2.0, seed=12)
    expected = apply_model(loaded.model, x[None], shifts=0)[0].numpy()
    got = streamed(loaded.model, x, shifts=0, backend=loaded.backend)
    assert min(sdr_db(expected[k], got[k]) for k in range(4)) >= 60


@pytest.mark.parametrize(
    ("name", "reason"),
    [("hybrid", "its HDemucs architecture is not HTDemucs"), ("mdx_q", "it is quantized")],
)
def test_forcing_onnx_on_what_it_cannot_take_names_the_model(
    hybrid_dir: Path, name: str, reason: str
) -> None:
    assert load_engine_model(name, hybrid_dir).backend.name == "torch"
    with pytest.raises(BackendUnavailableError) as caught:
        load_engine_model(name, hybrid_dir, backend="onnx")
    assert caught.value.message.startswith(f"model '{name}' cannot run on the onnx backend: ")
    assert reason in caught.value.message and "--backend torch" in caught.value.message


def test_torch_and_gpu_devices_stay_on_torch(model_dir: Path) -> None:
    assert load_engine_model("tiny", model_dir, backend="torch").backend.name == "torch"
    assert load_engine_model("tiny", model_dir, device="cuda").backend.name == "torch"
    with pytest.raises(BackendUnavailableError, match="the onnx backend runs on the CPU"):
        load_engine_model("tiny", model_dir, backend="onnx", device="cuda")


# ---- the command line and the worker's wiring ---------------------------------------------------


def test_cli_forced_onnx_on_hdemucs_is_one_clear_error(
    hybrid_dir: Path, make_audio: Any, tmp_path: Path
) -> None:
    from stemify.cli.main import cli

    song = make_audio("song.wav", seconds=1.0)
    args = ["separate", "-n", "hybrid", "--backend", "onnx", "--model-dir", str(hybrid_dir)]
    result = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "out"), str(song)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "stemify: error: model 'hybrid' cannot run on the onnx backend: its HDemucs "
        "architecture is not HTDemucs; run it with --backend torch (or STEMIFY_BACKEND=auto)"
    )
    assert not (tmp_path / "out").exists()


def test_models_list_and_export_say_which_backend(hybrid_dir: Path, tmp_path: Path) -> None:
    from stemify.cli.main import cli

    directory = tmp_path / "models"
    shutil.copytree(hybrid_dir, directory)
    own_repo(directory)
    runner = CliRunner()
    listed = runner.invoke(cli, ["models", "list", "--json", "--model-dir", str(directory)])
    rows = {row["name"]: row for row in json.loads(listed.output)}
    assert rows["solo"]["backend"] == "onnx" and rows["htdemucs_ft"]["backend"] == "onnx"
    assert rows["hybrid"]["backend"] == "torch" and rows["mdx_q"]["backend"] == "torch"
    assert rows["hdemucs_mmi"]["backend"] == "torch"
    forced = CliRunner(env={"STEMIFY_BACKEND": "torch"}).invoke(
        cli, ["models", "list", "--json", "--model-dir", str(directory)]
    )
    assert {row["backend"] for row in json.loads(forced.output)} == {"torch"}

    exported = runner.invoke(cli, ["models", "export", "solo", "--model-dir", str(directory)])
    assert exported.exit_code == 0, exported.output
    assert "solo: ready for the onnx backend" in exported.output
    assert len(exports(directory)) == 1
    refused = runner.invoke(cli, ["models", "export", "hybrid", "--model-dir", str(directory)])
    assert refused.exit_code == 1
    assert "model 'hybrid' cannot run on the onnx backend" in refused.output


def test_the_worker_cache_follows_the_backend_setting(make_services: Any) -> None:
    assert make_services().models.get("tiny").backend.name == "onnx"
    assert make_services(backend="torch").models.get("tiny").backend.name == "torch"
