"""Progress reports and cancellation, shared by the engine and everything that drives it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Stage = Literal["decoding", "separating", "encoding"]

# Share of the whole run each stage stands for in the overall fraction; separation dominates.
_STAGE_SPANS: dict[Stage, tuple[float, float]] = {
    "decoding": (0.0, 0.05),
    "separating": (0.05, 0.95),
    "encoding": (0.95, 1.0),
}


@dataclass(frozen=True)
class Progress:
    stage: Stage
    fraction: float  # of the whole separation, 0..1, never decreasing
    eta_s: float | None  # seconds left, None until there is a rate to extrapolate


ProgressCallback = Callable[[Progress], None]


class CancelToken:
    """Set from any thread; the engine checks it before every forward pass."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def canceled(self) -> bool:
        return self._event.is_set()


class ProgressTracker:
    """Turns per-stage fractions into one monotonic overall fraction with an ETA."""

    def __init__(
        self, callback: ProgressCallback | None, clock: Callable[[], float] = time.monotonic
    ):
        self._callback = callback
        self._clock = clock
        self._last = 0.0
        self._stage: Stage | None = None
        self._stage_started = self._last_report = clock()

    def report(self, stage: Stage, stage_fraction: float) -> None:
        if self._callback is None:
            return
        low, high = _STAGE_SPANS[stage]
        overall = low + (high - low) * min(max(stage_fraction, 0.0), 1.0)
        overall = max(overall, self._last)
        self._last = overall
        now = self._clock()
        if stage != self._stage:
            # The work behind this first report began when the previous stage last reported.
            self._stage, self._stage_started = stage, self._last_report
        self._last_report = now
        # Only separation has a steady rate worth extrapolating; it is also most of the time.
        eta = None
        elapsed = now - self._stage_started
        if stage == "separating" and stage_fraction > 0 and elapsed > 0:
            eta = elapsed * (1.0 - stage_fraction) / stage_fraction
        self._callback(Progress(stage=stage, fraction=overall, eta_s=eta))
