"""The onnx backend on the released htdemucs architecture (41.5 M parameters, random weights):
one export and one segment, so the one slow test of the backends (about a minute, 2 GB)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_engine_agreement import mix, sdr_db

from stemify.engine.backends.choose import load_engine_model, sub_models
from stemify.testing.random_models import RELEASED_KWARGS, build_htdemucs, save_bag, save_model

pytestmark = pytest.mark.slow


def test_released_size_segment_agrees_with_pytorch(tmp_path: Path) -> None:
    save_model(build_htdemucs(7, **RELEASED_KWARGS), tmp_path, "eeee0001")
    save_bag(tmp_path, "released", ["eeee0001"])
    loaded = load_engine_model("released", tmp_path, backend="onnx")
    assert loaded.backend.name == "onnx"
    (model,) = sub_models(loaded.model)  # the bag of one
    x = mix(7.8, seed=13)[None]
    with torch.inference_mode():
        expected = model(x)[0].numpy()
        got = loaded.backend.forward(model, x)[0].numpy()
    for k, source in enumerate(model.sources):
        assert sdr_db(expected[k], got[k]) >= 60, source
