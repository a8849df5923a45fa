"""The streaming engine computes what demucs.apply.apply_model computes."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from demucs.apply import apply_model
from demucs.pretrained import get_model

from stemify.engine import CancelToken, InferenceOptions, stream_separate
from stemify.engine.backends.choose import load_engine_model
from stemify.errors import CanceledError, InvalidOptionError

pytestmark = pytest.mark.unit

RATE = 44100


def sdr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    error = float(((reference - estimate) ** 2).sum())
    if error == 0.0:
        return float("inf")
    return 10 * float(np.log10(float((reference**2).sum()) / error))


def mix(seconds: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, int(RATE * seconds), generator=generator) * 0.3


def blocks_of(x: torch.Tensor, size: int) -> Iterator[np.ndarray]:
    for start in range(0, x.shape[-1], size):
        yield x[:, start : start + size].numpy()


class Replay:
    """Hands the engine the shift offsets apply_model drew, in the order it drew them.

    The transformer consumes the global ``random`` state inside its forward pass, and the
    streaming engine runs segments in another order, so a shared seed cannot line them up."""

    def __init__(self, values: list[int]) -> None:
        self.values = list(values)

    def randint(self, a: int, b: int) -> int:
        value = self.values.pop(0)
        assert a <= value <= b
        return value


def reference(
    model: Any, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch, **kwargs: Any
) -> tuple[np.ndarray, list[int]]:
    drawn: list[int] = []
    original = random.randint

    def recording(a: int, b: int) -> int:
        value = original(a, b)
        drawn.append(value)
        return value

    with monkeypatch.context() as patch:
        patch.setattr(random, "randint", recording)
        out = apply_model(model, x[None], **kwargs)[0].numpy()
    return out, drawn


def streamed(model: Any, x: torch.Tensor, block: int = 10_000, **kwargs: Any) -> np.ndarray:
    rng = kwargs.pop("rng", None)
    extra = {"backend": kwargs.pop("backend")} if "backend" in kwargs else {}
    parts = [
        out
        for _, out in stream_separate(
            model, blocks_of(x, block), x.shape[-1], InferenceOptions(**kwargs), rng=rng, **extra
        )
    ]
    return np.concatenate(parts, axis=-1)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize(
    ("name", "overlap", "shifts", "batch_size"),
    [
        ("tiny", 0.25, 0, 1),
        ("tiny", 0.1, 0, 1),
        ("tinybag", 0.25, 0, 1),
        ("tinybag", 0.1, 0, 1),
        ("tiny", 0.25, 2, 1),
        ("tinybag", 0.25, 1, 3),
        ("tiny6", 0.25, 0, 4),
    ],
)
def test_agrees_with_apply_model(
    model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    overlap: float,
    shifts: int,
    batch_size: int,
    backend: str,
) -> None:
    """On either backend (onnx: the network core exported and run on onnxruntime)."""
    loaded = load_engine_model(name, model_dir, backend=backend)  # type: ignore[arg-type]
    assert loaded.backend.name == backend
    model = loaded.model
    x = mix(4.3)
    expected, drawn = reference(model, x, monkeypatch, shifts=shifts, overlap=overlap)
    assert len(drawn) == shifts * (2 if name == "tinybag" else 1)
    got = streamed(
        model,
        x,
        shifts=shifts,
        overlap=overlap,
        batch_size=batch_size,
        rng=Replay(drawn),
        backend=loaded.backend,
    )
    assert got.shape == expected.shape
    for k, source in enumerate(model.sources):
        assert sdr_db(expected[k], got[k]) >= 60, source


def test_block_size_does_not_change_the_result(model_dir: Path) -> None:
    model = get_model("tiny", repo=model_dir)
    x = mix(3.1, seed=1)
    a = streamed(model, x, block=777, shifts=0)
    b = streamed(model, x, block=100_000, shifts=0)
    np.testing.assert_array_equal(a, b)


def test_custom_segment_agrees(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = get_model("tiny", repo=model_dir)
    x = mix(2.2, seed=2)
    expected, _ = reference(model, x, monkeypatch, shifts=0, segment=0.5)
    got = streamed(model, x, shifts=0, segment=0.5)
    assert min(sdr_db(expected[k], got[k]) for k in range(4)) >= 60


def test_input_shorter_than_a_segment(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = get_model("tiny", repo=model_dir)
    for samples in (1, 100, int(0.7 * RATE)):
        x = mix(samples / RATE, seed=3)
        expected, _ = reference(model, x, monkeypatch, shifts=0)
        got = streamed(model, x, shifts=0)
        assert got.shape == expected.shape == (4, 2, samples)
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_yields_the_input_alongside_the_output(model_dir: Path) -> None:
    model = get_model("tiny", repo=model_dir)
    x = mix(2.5, seed=4)
    pairs = list(stream_separate(model, blocks_of(x, 5000), x.shape[-1], InferenceOptions()))
    mixes = np.concatenate([m for m, _ in pairs], axis=-1)
    np.testing.assert_array_equal(mixes, x.numpy())
    assert len(pairs) > 1, "output must be released progressively, not at the end"


def test_cancellation_stops_within_one_segment(model_dir: Path) -> None:
    model = get_model("tiny", repo=model_dir)
    x = mix(10.0, seed=5)
    token = CancelToken()
    calls: list[tuple[int, int]] = []

    def on_segments(done: int, total: int) -> None:
        calls.append((done, total))
        if done == 3:
            token.cancel()

    blocks = blocks_of(x, 4096)
    options = InferenceOptions(shifts=0)
    with pytest.raises(CanceledError):
        for _ in stream_separate(
            model, blocks, x.shape[-1], options, on_segments=on_segments, cancel=token
        ):
            pass
    assert calls[-1][0] == 3 < calls[-1][1]


@pytest.mark.parametrize(("shifts", "batch_size"), [(0, 1), (2, 2), (1, 3)])
def test_progress_counts_every_forward_pass(model_dir: Path, shifts: int, batch_size: int) -> None:
    model = get_model("tinybag", repo=model_dir)
    x = mix(3.0, seed=6)
    options = InferenceOptions(shifts=shifts, batch_size=batch_size)
    calls: list[tuple[int, int]] = []
    forwards = 0
    original = [sub.forward for sub in model.models]

    def counting(forward: Any) -> Any:
        def wrapped(batch: torch.Tensor) -> torch.Tensor:
            nonlocal forwards
            forwards += batch.shape[0]
            return forward(batch)  # type: ignore[no-any-return]

        return wrapped

    for sub, forward in zip(model.models, original, strict=True):
        sub.forward = counting(forward)
    blocks = blocks_of(x, 4096)
    for _ in stream_separate(
        model, blocks, x.shape[-1], options, on_segments=lambda d, t: calls.append((d, t))
    ):
        pass
    done, total = zip(*calls, strict=True)
    assert list(done) == sorted(done), "progress must be monotonic"
    assert done[-1] == total[-1] == forwards
    assert len(set(total)) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"overlap": 1.0}, "overlap"),
        ({"shifts": -1}, "shifts"),
        ({"batch_size": 0}, "batch_size"),
        ({"segment": 30.0}, "longer than this model allows"),
        ({"segment": 0.0}, "segment must be positive"),
    ],
)
def test_invalid_options_are_refused(model_dir: Path, kwargs: dict[str, Any], message: str) -> None:
    model = get_model("tiny", repo=model_dir)
    with pytest.raises(InvalidOptionError, match=message):
        InferenceOptions(**kwargs).validate(model)
