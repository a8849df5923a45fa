"""Streaming integrated loudness after ITU-R BS.1770-4 / EBU R128.

pyloudnorm's ``Meter.integrated_loudness`` needs the whole signal in memory; the engine streams
a track block by block, so this meter runs the same algorithm incrementally:

* K-weighting with pyloudnorm's own biquads, applied by ``scipy.signal.lfilter`` whose state
  (``zi``) is carried from one block to the next, so block boundaries do not matter;
* the 400 ms gating blocks overlap by 75 %, so each is the sum of four consecutive 100 ms steps.
  Only one float per step is kept (the channel-weighted energy), about 10 floats per second:
  576 kB for a 2-hour track, whatever the block sizes;
* absolute gate at -70 LUFS, relative gate at -10 LU, as in pyloudnorm.

Only complete 400 ms gating blocks are measured, as BS.1770 defines them. pyloudnorm also
counts a last block cut short by the end of the signal when its length rounds up; that block
changes the result by far less than 0.1 LU on anything longer than a few seconds.
"""

from __future__ import annotations

import math
from array import array
from typing import Any

import numpy as np
import numpy.typing as npt
import pyloudnorm
import scipy.signal

STEPS_PER_SECOND = 10
STEPS_PER_BLOCK = 4
ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0
# BS.1770 channel weights in pyloudnorm's channel order: L, R, C, Ls, Rs.
CHANNEL_WEIGHTS = (1.0, 1.0, 1.0, 1.41, 1.41)


def _k_weighting(samplerate: int) -> list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]]:
    """The (b, a) of each K-weighting stage, taken from pyloudnorm so both meters agree."""
    stages = []
    for stage in pyloudnorm.Meter(samplerate)._filters.values():
        b = np.asarray(stage.b, dtype=np.float64) * float(stage.passband_gain)
        a = np.asarray(stage.a, dtype=np.float64)
        stages.append((b, a))
    return stages


def _energy_to_lufs(mean_square: float) -> float:
    if mean_square <= 0.0:
        return -math.inf
    return -0.691 + 10.0 * math.log10(mean_square)


class LoudnessMeter:
    """Integrated loudness of a signal fed as float blocks shaped ``(channels, n)``.

    Up to five channels, in the order L, R, C, Ls, Rs. The channel count is fixed by the
    first block. ``integrated_lufs`` may be called at any time and does not reset the meter.
    """

    def __init__(self, samplerate: int) -> None:
        if samplerate <= 0:
            raise ValueError(f"samplerate must be positive, got {samplerate}")
        self.samplerate = samplerate
        self._stages = _k_weighting(samplerate)
        self._channels: int | None = None
        self._weights: npt.NDArray[np.float64] = np.ones(0)
        self._states: list[npt.NDArray[np.float64]] = []
        self._position = 0  # samples seen so far
        self._step_index = 0  # index of the 100 ms step being accumulated
        self._step_end = self._boundary(1)
        self._partial = 0.0  # weighted energy of the step being accumulated
        self._steps = array("d")  # weighted energy of each completed step

    def _boundary(self, step: int) -> int:
        # Integer arithmetic keeps step edges exact at any rate, even ones not divisible by 10.
        return step * self.samplerate // STEPS_PER_SECOND

    def _start(self, channels: int) -> None:
        if not 1 <= channels <= len(CHANNEL_WEIGHTS):
            raise ValueError(f"loudness needs 1 to {len(CHANNEL_WEIGHTS)} channels, got {channels}")
        self._channels = channels
        self._weights = np.asarray(CHANNEL_WEIGHTS[:channels], dtype=np.float64)
        self._states = [
            np.zeros((channels, max(len(a), len(b)) - 1), dtype=np.float64) for b, a in self._stages
        ]

    def update(self, block: npt.NDArray[np.floating[Any]]) -> None:
        if block.ndim != 2:
            raise ValueError(f"expected a (channels, n) block, got shape {block.shape}")
        if self._channels is None:
            self._start(block.shape[0])
        elif block.shape[0] != self._channels:
            raise ValueError(f"expected {self._channels} channels, got {block.shape[0]}")
        n = block.shape[1]
        if n == 0:
            return
        filtered = block.astype(np.float64)
        for i, (b, a) in enumerate(self._stages):
            filtered, self._states[i] = scipy.signal.lfilter(
                b, a, filtered, axis=-1, zi=self._states[i]
            )
        # einsum, not @: a BLAS call here would wake OpenBLAS threads that steal torch's cores.
        energy = np.einsum("c,cn->n", self._weights, np.square(filtered))

        start = self._position
        end = start + n
        offset = 0
        while self._step_end <= end:
            cut = self._step_end - start
            self._steps.append(self._partial + float(energy[offset:cut].sum()))
            self._partial = 0.0
            offset = cut
            self._step_index += 1
            self._step_end = self._boundary(self._step_index + 1)
        self._partial += float(energy[offset:].sum())
        self._position = end

    def _block_powers(self) -> npt.NDArray[np.float64]:
        """Channel-weighted mean square of every complete 400 ms gating block."""
        steps = np.frombuffer(self._steps, dtype=np.float64)
        count = len(steps) - STEPS_PER_BLOCK + 1
        if count <= 0:
            return np.zeros(0)
        sums = np.convolve(steps, np.ones(STEPS_PER_BLOCK), mode="valid")
        starts = np.arange(count) * self.samplerate // STEPS_PER_SECOND
        ends = (np.arange(count) + STEPS_PER_BLOCK) * self.samplerate // STEPS_PER_SECOND
        powers: npt.NDArray[np.float64] = sums / (ends - starts)
        return powers

    def integrated_lufs(self) -> float:
        """Gated integrated loudness in LUFS.

        ``-inf`` when it cannot be measured: less than one 400 ms gating block, or no block
        above the -70 LUFS absolute gate (silence). This matches what pyloudnorm returns for
        silence; use ``integrated_lufs_or_none`` where a finite value or ``None`` is needed.
        """
        powers = self._block_powers()
        with np.errstate(divide="ignore"):
            loudness = -0.691 + 10.0 * np.log10(powers)
        above_absolute = powers[loudness >= ABSOLUTE_GATE_LUFS]
        if len(above_absolute) == 0:
            return -math.inf
        relative_gate = _energy_to_lufs(float(above_absolute.mean())) + RELATIVE_GATE_LU
        gated = powers[(loudness > relative_gate) & (loudness > ABSOLUTE_GATE_LUFS)]
        if len(gated) == 0:
            return -math.inf
        return _energy_to_lufs(float(gated.mean()))

    def integrated_lufs_or_none(self) -> float | None:
        """``integrated_lufs``, with ``None`` instead of ``-inf`` when not measurable."""
        lufs = self.integrated_lufs()
        return lufs if math.isfinite(lufs) else None
