"""The exported network core of an HTDemucs checkpoint, cached next to it (or in a writable
cache) and verified before use.

A file is named by the checkpoint's sha256 and the exporter version, so a changed checkpoint or
a new exporter never reuses an old export. Beside it, ``<file>.sha256`` holds the digest of the
export as written: an export whose bytes do not match (truncated, overwritten) is rebuilt. An
export is written under a temporary name, checked there, and renamed into place, so a crash or
a failed check leaves nothing in use, and workers exporting at once only replace each other.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stemify.engine.backends.htdemucs_core import HTDemucsCore, core_inputs
from stemify.models.pull import sha256_file

log = logging.getLogger(__name__)

# Bump when the exported graph changes (core boundary, opset, exporter): old files are ignored.
EXPORTER_VERSION = "core1-opset17"
OPSET = 17


def export_name(checkpoint_sha256: str) -> str:
    return f"core-{checkpoint_sha256[:32]}.{EXPORTER_VERSION}.onnx"


def valid_export(path: Path) -> bool:
    """``path`` exists and matches the digest written beside it."""
    digest = path.with_name(path.name + ".sha256")
    try:
        return digest.read_text().strip() == sha256_file(path)
    except OSError:
        return False


def _temp_beside(path: Path, suffix: str) -> Path:
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    return Path(name)


@dataclass
class PendingExport:
    """An export written under a temporary name beside its final ``path``: checked there, then
    installed (its digest first, then the file renamed into place) or dropped."""

    temp: Path
    path: Path
    digest: str
    seconds: float

    def install(self) -> None:
        # The digest goes first: a reader never sees an export without its digest. Renaming over
        # an existing (corrupt, or concurrently written) file is atomic, and a reader that has
        # opened the old one keeps it; nothing is ever unlinked under a reader.
        digest_temp = _temp_beside(self.path, ".sha256.tmp")
        digest_temp.write_text(self.digest + "\n")
        digest_temp.rename(self.path.with_name(self.path.name + ".sha256"))
        self.temp.rename(self.path)

    def drop(self) -> None:
        self.temp.unlink(missing_ok=True)


def export_core(model: Any, path: Path) -> PendingExport:
    """Export ``model``'s core to a temporary file beside ``path``."""
    started = time.monotonic()
    core = HTDemucsCore(model).eval()
    mix, mag = core_inputs(model)
    temp = _temp_beside(path, ".onnx.tmp")
    try:
        # The tracing exporter cannot take torch's fused attention kernel, which inference
        # mode selects; with gradients on, MultiheadAttention takes its composite path.
        with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                core,
                (mix, mag),
                str(temp),
                opset_version=OPSET,
                dynamo=False,
                input_names=["mix", "mag"],
                output_names=["freq", "time"],
                dynamic_axes={name: {0: "batch"} for name in ("mix", "mag", "freq", "time")},
            )
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return PendingExport(temp, path, sha256_file(temp), time.monotonic() - started)


def agreement_db(model: Any, run_core: Any) -> float:
    """The lower SDR, in dB, of the two core outputs of ``run_core`` against PyTorch's own, on a
    random segment."""
    mix, mag = core_inputs(model, seed=1)
    with torch.inference_mode():
        expected = HTDemucsCore(model).eval()(mix, mag)
    got = run_core(mix, mag)
    worst = float("inf")
    for reference, estimate in zip(expected, got, strict=True):
        ref = reference.numpy().astype(np.float64)
        error = float(((ref - estimate.numpy()) ** 2).sum())
        if error > 0:
            worst = min(worst, 10 * float(np.log10(float((ref**2).sum()) / error)))
    return worst
