"""Quality report of a separation, computed block by block in constant memory.

The engine feeds ``QualityAccumulator.update(mix, stems)`` once per output block with every
source of the model (before any two-stem folding) and the matching input mix, so the report
covers each stem's levels and how well the stems add back up to the mix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from stemify.quality.loudness import LoudnessMeter

# Reported when the stems add up to the mix exactly, where the true ratio is infinite.
SNR_CAP_DB = 200.0

FloatArray = npt.NDArray[np.floating[Any]]


def _energy(samples: npt.NDArray[np.floating[Any]]) -> float:
    """Sum of squares without BLAS: numpy's dot would wake OpenBLAS threads, whose spinning
    steals the cores torch is separating on (measured: separation twice as slow)."""
    flat = samples.reshape(-1)
    return float(np.einsum("i,i->", flat, flat, dtype=np.float64))


def _db(ratio: float) -> float | None:
    """``10·log10(ratio)``, or None when the ratio is 0 (a level of digital silence)."""
    return 10.0 * math.log10(ratio) if ratio > 0.0 else None


def _rounded(value: float | None, digits: int = 2) -> float | None:
    # JSON has no NaN or infinity; an unmeasurable value is null.
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


@dataclass(frozen=True)
class StemQuality:
    peak_dbfs: float | None  # None for digital silence
    rms_dbfs: float | None  # a full-scale sine is -3.01 dBFS (no +3 dB AES offset)
    lufs: float | None  # integrated loudness; None if not measurable (silent or < 400 ms)
    clipped_fraction: float  # fraction of samples with |x| >= 1.0, before any clip policy

    def to_dict(self) -> dict[str, Any]:
        return {
            "peak_dbfs": _rounded(self.peak_dbfs),
            "rms_dbfs": _rounded(self.rms_dbfs),
            "lufs": _rounded(self.lufs),
            # Two decimals would hide the clipping that matters (0.1 % of samples is audible).
            "clipped_fraction": _rounded(self.clipped_fraction, 6),
        }


class StemMeter:
    """Peak, RMS, integrated loudness and clipping of one stem fed as ``(channels, n)`` blocks."""

    def __init__(self, samplerate: int) -> None:
        self._loudness = LoudnessMeter(samplerate)
        self._peak = 0.0
        self._sum_squares = 0.0
        self._samples = 0  # over all channels
        self._clipped = 0

    def update(self, block: FloatArray) -> None:
        self._loudness.update(block)
        if block.size == 0:
            return
        magnitude = np.abs(block)
        self._peak = max(self._peak, float(magnitude.max()))
        flat = block.astype(np.float64).ravel()
        self._sum_squares += _energy(flat)
        self._samples += block.size
        self._clipped += int(np.count_nonzero(magnitude >= 1.0))

    def result(self) -> StemQuality:
        if self._samples == 0:
            return StemQuality(None, None, None, 0.0)
        mean_square = self._sum_squares / self._samples
        return StemQuality(
            peak_dbfs=_db(self._peak**2),
            rms_dbfs=_db(mean_square),
            lufs=self._loudness.integrated_lufs_or_none(),
            clipped_fraction=self._clipped / self._samples,
        )


class ConsistencyMeter:
    """How well the stems add back up to the mix: ``10·log10(Σ mix² / Σ (mix − Σ stems)²)``."""

    def __init__(self) -> None:
        self._mix_energy = 0.0
        self._residual_energy = 0.0

    def update(self, mix_block: FloatArray, stems_sum_block: FloatArray) -> None:
        if mix_block.shape != stems_sum_block.shape:
            raise ValueError(
                f"mix block {mix_block.shape} and stems sum {stems_sum_block.shape} differ"
            )
        mix = mix_block.astype(np.float64).ravel()
        residual = mix - stems_sum_block.astype(np.float64).ravel()
        self._mix_energy += _energy(mix)
        self._residual_energy += _energy(residual)

    def snr_db(self) -> float | None:
        """None if the mix is silent; ``SNR_CAP_DB`` if the stems reconstruct it exactly."""
        if self._mix_energy == 0.0:
            return None
        if self._residual_energy == 0.0:
            return SNR_CAP_DB
        return min(SNR_CAP_DB, 10.0 * math.log10(self._mix_energy / self._residual_energy))


@dataclass(frozen=True)
class QualityReport:
    stems: dict[str, StemQuality]
    mixture_snr_db: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: values rounded to 2 decimals, null where not measurable."""
        return {
            "stems": {name: quality.to_dict() for name, quality in self.stems.items()},
            "mixture_snr_db": _rounded(self.mixture_snr_db),
        }


class QualityAccumulator:
    """Feeds one ``StemMeter`` per stem and a ``ConsistencyMeter`` from the engine's blocks."""

    def __init__(self, stem_names: Sequence[str], samplerate: int) -> None:
        if len(set(stem_names)) != len(stem_names):
            raise ValueError(f"duplicate stem names: {list(stem_names)}")
        self._names = list(stem_names)
        self._meters = [StemMeter(samplerate) for _ in self._names]
        self._consistency = ConsistencyMeter()

    def update(self, mix_block: FloatArray, stems_block: FloatArray) -> None:
        """``mix_block`` is ``(channels, n)``; ``stems_block`` is ``(stems, channels, n)``."""
        if stems_block.ndim != 3 or stems_block.shape[0] != len(self._names):
            raise ValueError(
                f"expected a ({len(self._names)}, channels, n) stems block, "
                f"got shape {stems_block.shape}"
            )
        for meter, stem in zip(self._meters, stems_block, strict=True):
            meter.update(stem)
        # Summed in float64 so the residual reflects the model, not float32 rounding.
        self._consistency.update(mix_block, stems_block.sum(axis=0, dtype=np.float64))

    def report(self) -> QualityReport:
        return QualityReport(
            stems={
                name: meter.result() for name, meter in zip(self._names, self._meters, strict=True)
            },
            mixture_snr_db=self._consistency.snr_db(),
        )
