"""How many worker children the autoscaling supervisor wants: a pure function of the backlog.

Kept free of processes, clocks and the store so that every rule (scale up at once, scale down
only after a cool-down, bounded steps, hysteresis) is tested in-process over a scripted
backlog. :mod:`stemify.worker.supervisor` feeds it one :class:`Observation` per tick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from stemify.settings import Settings


@dataclass(frozen=True)
class Policy:
    """The pool's bounds and thresholds (``--autoscale MIN:MAX`` and ``STEMIFY_AUTOSCALE_*``)."""

    minimum: int
    maximum: int
    concurrency: int = 1  # jobs at once per child
    # Jobs waiting beyond the children's slots before children are added (0: any such job).
    up_backlog: int = 0
    # ... or a job waiting this long beyond the slots adds one whatever the backlog.
    up_wait_s: float = 60.0
    # Free slots kept when scaling down, beyond which idle children go.
    down_spare: int = 0
    # Scale down only this long after the last arrival.
    cooldown_s: float = 120.0
    max_step: int = 2

    @classmethod
    def from_settings(cls, settings: Settings, minimum: int, maximum: int) -> Policy:
        # Each field but the bounds is the setting STEMIFY_AUTOSCALE_<FIELD>.
        tuned = ("up_backlog", "up_wait_s", "down_spare", "cooldown_s", "max_step")
        values = {name: getattr(settings, f"autoscale_{name}") for name in tuned}
        return cls(minimum, maximum, settings.worker_concurrency, **values)


@dataclass(frozen=True)
class Observation:
    queued: int  # jobs queued in the store
    running: int  # jobs running (on any worker)
    oldest_queued_age_s: float | None
    children: int  # children alive or starting, not retiring
    since_arrival_s: float  # since the backlog last grew or a job last waited


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str  # steady, below_minimum, above_maximum, backlog, waiting, idle

    def direction(self, children: int) -> str | None:
        if self.desired > children:
            return "up"
        if self.desired < children:
            return "down"
        return None


def parse_range(text: str) -> tuple[int, int]:
    """``MIN:MAX`` of ``--autoscale``; ValueError with the reason when it is not one."""
    low, sep, high = text.partition(":")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise ValueError(f"expected MIN:MAX (e.g. 1:4), got {text!r}")
    minimum, maximum = int(low), int(high)
    if maximum < 1 or minimum > maximum:
        raise ValueError(f"need 0 <= MIN <= MAX and MAX >= 1, got {text!r}")
    return minimum, maximum


def decide(seen: Observation, policy: Policy) -> Decision:
    """The children wanted now and why. Up is at once and bounded by ``max_step``; down only
    after ``cooldown_s`` without arrivals, and only as far as the backlog leaves slots spare
    (the supervisor then retires idle children only)."""
    children = seen.children
    if children < policy.minimum:
        return Decision(policy.minimum, "below_minimum")
    if children > policy.maximum:
        return Decision(policy.maximum, "above_maximum")
    backlog = seen.queued + seen.running
    capacity = children * policy.concurrency
    wanted = min(policy.maximum, math.ceil(backlog / policy.concurrency))
    excess = backlog - capacity
    waited = seen.oldest_queued_age_s or 0.0
    if excess > 0 and children < policy.maximum:
        reason = None
        if excess > policy.up_backlog:
            reason = "backlog"
        elif seen.queued > 0 and waited >= policy.up_wait_s:
            reason = "waiting"
        if reason is not None:
            step = min(policy.max_step, max(1, wanted - children))
            return Decision(min(policy.maximum, children + step), reason)
    spare = capacity - backlog - policy.down_spare
    if seen.since_arrival_s >= policy.cooldown_s and spare >= policy.concurrency:
        desired = max(policy.minimum, children - min(policy.max_step, spare // policy.concurrency))
        if desired < children:
            return Decision(desired, "idle")
    return Decision(children, "steady")
