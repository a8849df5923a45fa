"""The ``onnx`` backend: the HTDemucs network core on onnxruntime, demucs' STFT, masking and
iSTFT around it in torch (``htdemucs_core.separate_with``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from stemify.engine.backends.htdemucs_core import Core, separate_with

NAME = "onnx"


def open_session(path: Path, threads: int) -> Any:
    """An onnxruntime session on ``threads`` intra-op threads: the worker's core share.

    One inter-op thread and sequential execution: the graph is a chain, and more threads than
    the share would spin against the other jobs' threads, as torch's would."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # its warnings about unused initialisers are noise
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def session_core(session: Any) -> Core:
    def run(mix: torch.Tensor, mag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freq, time = session.run(
            None,
            {"mix": np.ascontiguousarray(mix.numpy()), "mag": np.ascontiguousarray(mag.numpy())},
        )
        return torch.from_numpy(freq), torch.from_numpy(time)

    return run


class OnnxBackend:
    """One verified session per sub-model of the bag, looked up by the sub-model itself."""

    name = NAME

    def __init__(self, sessions: list[tuple[Any, Any, int]]) -> None:
        # (sub-model, session, bytes of its exported file) for each sub-model.
        self._cores = {id(sub): (sub, session_core(session)) for sub, session, _ in sessions}
        self._bytes = sum(size for _, _, size in sessions)

    def forward(self, model: Any, batch: torch.Tensor) -> torch.Tensor:
        _, core = self._cores[id(model)]
        return separate_with(model, core, batch)

    def memory_bytes(self) -> int:
        # onnxruntime holds the exported weights (float32, the size of the file) beside torch's.
        return self._bytes
