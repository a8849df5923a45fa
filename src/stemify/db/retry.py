"""Which database errors mean "unreachable for now" (a restart, a failover, a full pool), and
retrying a store call through them for a bounded time."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

log = logging.getLogger(__name__)
T = TypeVar("T")

# The errors the API answers with 503 and workers wait out: the server is away or busy, not
# the statement wrong (an IntegrityError, a ProgrammingError are bugs or conflicts).
UNAVAILABLE: tuple[type[Exception], ...] = (OperationalError, InterfaceError, PoolTimeoutError)


def unavailable(exc: BaseException) -> bool:
    if isinstance(exc, UNAVAILABLE):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def call_retrying(call: Callable[[], T], within_s: float, what: str) -> T:
    """``call()``, retried while the database is unavailable, for up to ``within_s`` seconds
    (then its error is raised). Each retry is logged as a warning naming ``what``."""

    def warn(state: object) -> None:
        log.warning("database unavailable during %s; retrying", what)

    retrying = Retrying(
        retry=retry_if_exception(unavailable),
        stop=stop_after_delay(within_s),
        wait=wait_exponential(multiplier=0.2, max=2.0),
        before_sleep=warn,
        reraise=True,
    )
    return retrying(call)
