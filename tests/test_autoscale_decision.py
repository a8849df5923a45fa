"""The autoscaler's decision, in-process: up at once and bounded, down only after the cool-down,
no flapping over a backlog that oscillates around a threshold; and ``--autoscale`` parsing."""

from __future__ import annotations

import pytest

from stemify.settings import Settings
from stemify.worker.autoscale import Decision, Observation, Policy, decide, parse_range
from stemify.worker.supervisor import RestartBackoff

pytestmark = pytest.mark.unit

POLICY = Policy(minimum=1, maximum=3, cooldown_s=30.0, max_step=2, up_wait_s=60.0)


def seen(
    queued: int, running: int, children: int, since: float = 0.0, oldest: float | None = None
) -> Observation:
    return Observation(queued, running, oldest, children, since)


def test_a_burst_scales_up_at_once_bounded_by_the_step() -> None:
    assert decide(seen(8, 1, 1), POLICY) == Decision(3, "backlog")
    assert decide(seen(8, 1, 1), Policy(1, 8, max_step=2)) == Decision(3, "backlog")
    assert decide(seen(1, 1, 1), POLICY) == Decision(2, "backlog")
    assert decide(seen(8, 3, 3), POLICY) == Decision(3, "steady")  # at the maximum


def test_below_the_minimum_is_restored_whatever_the_backlog() -> None:
    assert decide(seen(0, 0, 0), POLICY) == Decision(1, "below_minimum")
    assert decide(seen(0, 0, 4), POLICY) == Decision(3, "above_maximum")


def test_scale_to_zero_and_back() -> None:
    policy = Policy(0, 2, cooldown_s=10.0)
    assert decide(seen(0, 0, 1, since=10.0), policy) == Decision(0, "idle")
    assert decide(seen(1, 0, 0), policy) == Decision(1, "backlog")


def test_down_only_after_the_cool_down_and_only_as_far_as_the_backlog_allows() -> None:
    assert decide(seen(0, 1, 3, since=29.0), POLICY) == Decision(3, "steady")
    assert decide(seen(0, 1, 3, since=30.0), POLICY) == Decision(1, "idle")
    assert decide(seen(0, 2, 3, since=30.0), POLICY) == Decision(2, "idle")
    assert decide(seen(0, 0, 1, since=300.0), POLICY) == Decision(1, "steady")  # the minimum
    assert decide(seen(0, 0, 3, since=200.0), Policy(0, 3, max_step=1)) == Decision(2, "idle")
    spare = Policy(1, 3, down_spare=1)
    assert decide(seen(0, 1, 3, since=200.0), spare) == Decision(2, "idle")


def test_up_thresholds_backlog_and_waiting_age() -> None:
    tolerant = Policy(1, 4, up_backlog=2, up_wait_s=60.0)
    assert decide(seen(2, 1, 1, oldest=5.0), tolerant) == Decision(1, "steady")
    assert decide(seen(2, 1, 1, oldest=61.0), tolerant) == Decision(3, "waiting")
    assert decide(seen(3, 1, 1, oldest=1.0), tolerant) == Decision(3, "backlog")


def test_concurrency_counts_slots_not_children() -> None:
    policy = Policy(1, 4, concurrency=2)
    assert decide(seen(0, 2, 1), policy) == Decision(1, "steady")
    assert decide(seen(3, 2, 1), policy) == Decision(3, "backlog")
    assert decide(seen(0, 1, 3, since=200.0), policy) == Decision(1, "idle")


def test_a_backlog_oscillating_around_the_threshold_does_not_flap() -> None:
    """Jobs arrive every few ticks, the backlog swings between one and two jobs over two
    children: the pool grows once and stays, since arrivals keep the cool-down from ending."""
    policy = Policy(1, 4, cooldown_s=20.0)
    children, events, since = 1, [], 0.0
    for tick in range(200):  # 2 s ticks
        backlog = 2 if tick % 4 < 2 else 1
        since = 0.0 if tick % 4 == 0 else since + 2.0  # an arrival every 8 s
        decision = decide(seen(0, backlog, children, since=since), policy)
        if decision.desired != children:
            events.append((tick, decision.desired, decision.reason))
            children = decision.desired
    assert events == [(0, 2, "backlog")]
    # The arrivals stop: after the cool-down the pool goes back once, to what is running.
    for tick in range(200, 220):
        since += 2.0
        decision = decide(seen(0, 1, children, since=since), policy)
        if decision.desired != children:
            events.append((tick, decision.desired, decision.reason))
            children = decision.desired
    assert events == [(0, 2, "backlog"), (206, 1, "idle")]


def test_policy_from_settings() -> None:
    settings = Settings(
        autoscale_cooldown_s=5, autoscale_up_backlog=3, autoscale_max_step=1, worker_concurrency=2
    )
    policy = Policy.from_settings(settings, 1, 3)
    assert (policy.cooldown_s, policy.up_backlog, policy.max_step, policy.concurrency) == (
        5.0,
        3,
        1,
        2,
    )


@pytest.mark.parametrize(
    ("text", "bounds"), [("1:3", (1, 3)), ("0:2", (0, 2)), (" 2 : 2 ", (2, 2))]
)
def test_parse_range(text: str, bounds: tuple[int, int]) -> None:
    assert parse_range(text) == bounds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3", "expected MIN:MAX"),
        ("a:b", "expected MIN:MAX"),
        ("-1:2", "expected MIN:MAX"),
        ("3:1", "need 0 <= MIN <= MAX"),
        ("0:0", "MAX >= 1"),
    ],
)
def test_parse_range_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_range(text)


def test_restart_backoff_doubles_for_children_dying_young_and_resets_after_a_stable_one() -> None:
    backoff = RestartBackoff(base_s=0.5, stable_s=60.0)
    assert [backoff.exited(2.0, now=100.0) for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff.not_before == 104.0
    assert [backoff.exited(1.0, now=0.0) for _ in range(5)][-1] == 0.5 * 64  # capped
    assert backoff.exited(61.0, now=0.0) == 0.0 and backoff.crashes == 0
    assert backoff.exited(1.0, now=0.0) == 0.5
