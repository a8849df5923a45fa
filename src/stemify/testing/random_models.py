"""Random-weight Demucs models saved in demucs' own checkpoint format.

No pretrained weights can be downloaded where tests and benchmarks run, so they build models
with demucs' classes and save them exactly as demucs' release files are saved (a pickled
package with ``klass/args/kwargs/state``, named ``<sig>-<sha256[:8]>.th``), plus a bag
``<name>.yaml``. Loading them then goes through ``demucs.pretrained.get_model(name, repo=...)``,
the real code path.

Quantized models (the official ``mdx_q`` and ``mdx_extra_q``) are saved the way demucs' training
saves them (``demucs.states.serialize_model(model, args, quantizer)``): ``state`` is diffq's
bit-packed ``DiffQuantizer.get_quantized_state()`` marked ``__quantized``, which demucs' loader
restores with ``diffq.restore_quantized_state``.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
import yaml
from demucs.htdemucs import HTDemucs
from demucs.states import get_state, save_with_checksum

from stemify.models.catalogue import official_catalogue

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


# A small Hybrid Demucs (v3, the hdemucs_mmi and mdx architecture): no transformer, no
# fixed segment; what the onnx backend does not take.
TINY_HDEMUCS_KWARGS: dict[str, Any] = {
    "channels": 8,
    "dconv_depth": 1,
    "dconv_attn": 10,  # layers from this index on have attention: none
    "dconv_lstm": 10,
    "segment": 4,
}


def build_hdemucs(seed: int, sources: list[str] | None = None, **kwargs: Any) -> Any:
    from demucs.hdemucs import HDemucs

    torch.manual_seed(seed)
    model = HDemucs(sources=list(sources or SOURCES), **{**TINY_HDEMUCS_KWARGS, **kwargs})
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


# Parameters of more than this many MB are quantized, smaller ones are kept as float32 (diffq's
# ``min_size``). demucs trains with 0.2 MB; the tiny model needs less to quantize 98 % of its
# weights. Every quantized parameter's size is a multiple of ``QUANT_GROUP_SIZE``.
QUANT_MIN_SIZE_MB = 0.001
QUANT_GROUP_SIZE = 8  # demucs' default: one bit width per 8 weights


def save_quantized_model(
    model: Any,
    directory: Path,
    sig: str,
    *,
    bits: tuple[int, int] = (4, 6),
    seed: int = 0,
    min_size: float = QUANT_MIN_SIZE_MB,
    group_size: int = QUANT_GROUP_SIZE,
) -> Path:
    """Save ``model`` diffq-quantized, as demucs saves its quantized releases; returns the
    ``<sig>-<sha8>.th`` path. ``model`` itself is left unchanged (float weights, no hooks).

    A trained DiffQuantizer has learnt a bit width per group of ``group_size`` weights; here each
    group gets a random width in ``bits`` (inclusive), so several packed widths are exercised."""
    from diffq import DiffQuantizer

    low, high = bits
    quantizer = DiffQuantizer(model, min_size=min_size, group_size=group_size)
    try:
        # DiffQuantizer keeps one logit per group (``<param>_diffq``), mapped to a bit width by
        # bits = max_bits * t + (1 - t) * min_bits, t = sigmoid(logit); invert it for exact widths.
        generator = torch.Generator().manual_seed(seed)
        span = quantizer.max_bits - quantizer.min_bits
        for name, logit in model.named_parameters():
            if not name.endswith(quantizer.suffix):
                continue
            widths = torch.randint(low, high + 1, logit.shape, generator=generator)
            t = (widths.double() - quantizer.min_bits) / span
            logit.data[:] = torch.log(t / (1 - t)).to(logit.dtype)
        args, kwargs = model._init_args_kwargs
        package = {
            "klass": type(model),
            "args": args,
            "kwargs": kwargs,
            "state": get_state(model, quantizer),  # type: ignore[no-untyped-call]
            # What demucs' training config holds for a diffq run (`quant:` section).
            "training_args": {
                "quant": {
                    "diffq": 3e-4,
                    "qat": None,
                    "min_size": min_size,
                    "group_size": group_size,
                }
            },
        }
    finally:
        quantizer.detach()
    directory.mkdir(parents=True, exist_ok=True)
    save_with_checksum(package, directory / f"{sig}.th")  # type: ignore[no-untyped-call]
    (path,) = directory.glob(f"{sig}-*.th")
    return path


def quantized_weight_bytes(model: Any, min_size: float = QUANT_MIN_SIZE_MB) -> int:
    """How many float32 bytes of ``model``'s parameters ``save_quantized_model`` quantizes."""
    min_params = math.floor(min_size * 2**20 / 4)
    return sum(4 * p.numel() for p in model.parameters() if p.numel() > min_params)


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


def make_quantized_official_repo(directory: Path, name: str = "mdx_q") -> list[Path]:
    """Random-weight quantized stand-ins for the official quantized bag ``name``: tiny HTDemucs
    models saved under its real signatures, and demucs' own ``<name>.yaml`` (weights, segment).

    The files' sha8 are those of the random weights, so ``models verify`` would call them
    foreign; ``load_model(name, directory)`` loads them like the real release."""
    entry = official_catalogue()[name]
    paths = [
        save_quantized_model(
            build_htdemucs(100 + index, sources=list(entry.sources), **TINY_KWARGS),
            directory,
            model_file.signature,
            seed=index,
        )
        for index, model_file in enumerate(entry.files)
    ]
    (directory / f"{name}.yaml").write_text(entry.bag_yaml)
    return paths
