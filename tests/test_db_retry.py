"""Store calls retried through a database outage: only "unavailable" errors, only so long."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from stemify.db.retry import call_retrying, unavailable

pytestmark = pytest.mark.unit


def flaky(failures: int, error: Exception) -> tuple[list[int], Callable[[], str]]:
    calls: list[int] = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise error
        return "done"

    return calls, call


DOWN = OperationalError("SELECT 1", {}, Exception("connection refused"))


def test_an_outage_is_waited_out() -> None:
    calls, call = flaky(2, DOWN)
    assert call_retrying(call, 10, "test") == "done"
    assert len(calls) == 3


def test_a_longer_outage_raises_after_the_time_given() -> None:
    calls, call = flaky(10_000, DOWN)
    started = time.monotonic()
    with pytest.raises(OperationalError):
        call_retrying(call, 0.5, "test")
    assert time.monotonic() - started < 3 and len(calls) >= 2


def test_other_errors_are_not_retried() -> None:
    conflict = IntegrityError("INSERT", {}, Exception("duplicate key"))
    calls, call = flaky(1, conflict)
    with pytest.raises(IntegrityError):
        call_retrying(call, 10, "test")
    assert len(calls) == 1 and not unavailable(conflict) and unavailable(DOWN)
