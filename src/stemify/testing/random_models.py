"""Random-weight Demucs models saved in demucs' own checkpoint format.

No pretrained weights can be downloaded where tests and benchmarks run, so they build models
with demucs' classes and save them exactly as demucs' release files are saved (a pickled
package with ``klass/args/kwargs/state``, named ``<sig>-<sha256[:8]>.th``), plus a bag
``<name>.yaml``. Loading them then goes through ``demucs.pretrained.get_model(name, repo=...)``,
the real code path.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
import yaml
from demucs.htdemucs import HTDemucs
from demucs.states import get_state, save_with_checksum

SOURCES = ["drums", "bass", "other", "vocals"]

# A small HTDemucs that runs in milliseconds per segment on a CPU.
TINY_KWARGS: dict[str, Any] = {
    "channels": 8,
    "t_layers": 1,
    "t_heads": 2,
    "segment": Fraction(1, 1),
    "dconv_depth": 1,
}

# The released htdemucs architecture (about 41.5 M parameters): same compute as the real weights.
RELEASED_KWARGS: dict[str, Any] = {"bottom_channels": 512, "segment": Fraction(39, 5)}


def build_htdemucs(seed: int, sources: list[str] | None = None, **kwargs: Any) -> Any:
    torch.manual_seed(seed)
    model = HTDemucs(sources=list(sources or SOURCES), **kwargs)
    model.eval()
    return model


def save_model(model: Any, directory: Path, sig: str) -> Path:
    """Save ``model`` as demucs does; returns the ``<sig>-<sha8>.th`` path."""
    args, kwargs = model._init_args_kwargs
    package = {
        "klass": type(model),
        "args": args,
        "kwargs": kwargs,
        "state": get_state(model, None, half=True),  # type: ignore[no-untyped-call]
        "training_args": {},
    }
    directory.mkdir(parents=True, exist_ok=True)
    save_with_checksum(package, directory / f"{sig}.th")  # type: ignore[no-untyped-call]
    (path,) = directory.glob(f"{sig}-*.th")
    return path


def save_bag(
    directory: Path,
    name: str,
    sigs: list[str],
    weights: list[list[float]] | None = None,
    segment: float | None = None,
) -> Path:
    bag: dict[str, Any] = {"models": sigs}
    if weights is not None:
        bag["weights"] = weights
    if segment is not None:
        bag["segment"] = segment
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(bag))
    return path


def make_tiny_repo(directory: Path) -> dict[str, list[str]]:
    """Write ``tiny`` (one model), ``tinybag`` (two, weighted) and ``tiny6`` (six sources)."""
    save_model(build_htdemucs(1, **TINY_KWARGS), directory, "aaaa0001")
    save_model(build_htdemucs(2, **TINY_KWARGS), directory, "aaaa0002")
    six = [*SOURCES, "guitar", "piano"]
    save_model(build_htdemucs(3, sources=six, **TINY_KWARGS), directory, "aaaa0003")
    save_bag(directory, "tiny", ["aaaa0001"])
    save_bag(directory, "tinybag", ["aaaa0001", "aaaa0002"], weights=[[1, 1, 0, 1], [0, 1, 1, 1]])
    save_bag(directory, "tiny6", ["aaaa0003"])
    return {"tiny": SOURCES, "tinybag": SOURCES, "tiny6": six}
