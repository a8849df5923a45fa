"""Error tracking with Sentry, on only when ``STEMIFY_SENTRY_DSN`` is set.

What is reported: errors logged at ERROR level or above (an unexpected exception in a job or
a request, a failing maintenance loop) and unhandled exceptions in the API. A job that fails
for its input (bad audio, a dead link) is the user's error, not the service's, and is not
reported. Events raised while a job runs carry its id as the ``job_id`` tag.

Nothing secret leaves: query strings (download links carry their signature there) are dropped
from events, local variables are not sent (they hold keys and signatures), and every string
of an event or breadcrumb goes through the same :class:`~stemify.redaction.Redactor` as the
logs — Sentry reads log records before any handler formats them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import sentry_sdk
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.transport import Transport
from sentry_sdk.types import Breadcrumb, BreadcrumbHint, Event, Hint

from stemify import __version__
from stemify.redaction import Redactor, secret_values
from stemify.settings import Settings

T = TypeVar("T")


def init_sentry(settings: Settings, transport: Transport | None = None) -> bool:
    """Start the Sentry client; False (and nothing started) without a DSN. ``transport``
    replaces the HTTP one (tests record envelopes instead of sending them)."""
    if settings.sentry_dsn is None:
        return False
    scrubber = Scrubber(Redactor(secret_values(settings)))
    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        environment=settings.sentry_environment,
        release=f"stemify@{__version__}",
        traces_sample_rate=settings.sentry_traces_sample_rate,
        transport=transport,
        # Log lines become breadcrumbs; ERROR lines become events (each exception once).
        integrations=[LoggingIntegration(event_level=logging.ERROR)],
        include_local_variables=False,
        before_send=scrubber.event,
        before_breadcrumb=scrubber.breadcrumb,
    )
    return True


class Scrubber:
    """``before_send`` and ``before_breadcrumb``: no query strings, every string redacted."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor

    def event(self, event: Event, _hint: Hint) -> Event:
        request = event.get("request")
        if isinstance(request, dict):
            request.pop("query_string", None)
            url = request.get("url")
            if isinstance(url, str):
                request["url"] = url.split("?", 1)[0]
        return _cleaned(event, self._redactor)

    def breadcrumb(self, crumb: Breadcrumb, _hint: BreadcrumbHint) -> Breadcrumb:
        return _cleaned(crumb, self._redactor)


def _cleaned(value: T, redactor: Redactor) -> T:
    if isinstance(value, str):
        return redactor.clean(value)  # type: ignore[return-value]
    if isinstance(value, dict):
        return {k: _cleaned(v, redactor) for k, v in value.items()}  # type: ignore[return-value]
    if isinstance(value, list | tuple):
        return type(value)(_cleaned(v, redactor) for v in value)
    return value


@contextmanager
def job_scope(job_id: str) -> Iterator[None]:
    """Tag every event raised inside the block with the job's id."""
    with sentry_sdk.isolation_scope() as scope:
        scope.set_tag("job_id", job_id)
        yield
