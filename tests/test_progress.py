"""ProgressTracker: one monotonic fraction over the stages, and an ETA from the separation rate."""

from __future__ import annotations

import pytest

from stemify.engine.progress import Progress, ProgressTracker

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_eta_counts_the_work_before_the_first_separation_report() -> None:
    clock, seen = Clock(), list[Progress]()
    tracker = ProgressTracker(seen.append, clock=clock)
    tracker.report("decoding", 1.0)
    clock.now += 10.0  # the first quarter of the separation
    tracker.report("separating", 0.25)
    clock.now += 10.0
    tracker.report("separating", 0.5)
    assert [p.eta_s for p in seen] == [None, pytest.approx(30.0), pytest.approx(20.0)]
    assert [p.fraction for p in seen] == pytest.approx([0.05, 0.275, 0.5])


def test_no_eta_without_elapsed_time_and_fraction_never_decreases() -> None:
    clock, seen = Clock(), list[Progress]()
    tracker = ProgressTracker(seen.append, clock=clock)
    tracker.report("separating", 0.5)  # no time has passed: no rate to extrapolate
    tracker.report("separating", 0.25)
    tracker.report("encoding", 1.0)
    assert [p.eta_s for p in seen] == [None, None, None]
    assert [p.fraction for p in seen] == pytest.approx([0.5, 0.5, 1.0])
