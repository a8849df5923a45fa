"""The backend seam: a batch of normalised segments in, the stems for them out."""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Backend(Protocol):
    """Runs one sub-model of a (bag of) model(s) on a batch of segments.

    The batch is a stacked tensor, so segments of different jobs using the same sub-model could
    share one call later (GPU workers); nothing in a backend depends on which job a segment of
    the batch belongs to."""

    name: str

    def forward(self, model: Any, batch: torch.Tensor) -> torch.Tensor: ...

    def memory_bytes(self) -> int:
        """Memory held by the backend beyond the torch model's own weights."""
        ...


class TorchBackend:
    """demucs' own forward pass, on the model's device: today's engine, and GPU's path."""

    name = "torch"

    def forward(self, model: Any, batch: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = model(batch)
        return out

    def memory_bytes(self) -> int:
        return 0


TORCH = TorchBackend()
