"""Error tracking with Sentry, on only when ``STEMIFY_SENTRY_DSN`` is set.

What is reported: errors logged at ERROR level or above (an unexpected exception in a job or
a request, a failing maintenance loop) and unhandled exceptions in the API. A job that fails
for its input (bad audio, a dead link) is the user's error, not the service's, and is not
reported. Events raised while a job runs carry its id as the ``job_id`` tag.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import sentry_sdk
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.transport import Transport

from stemify import __version__
from stemify.settings import Settings


def init_sentry(settings: Settings, transport: Transport | None = None) -> bool:
    """Start the Sentry client; False (and nothing started) without a DSN. ``transport``
    replaces the HTTP one (tests record envelopes instead of sending them)."""
    if settings.sentry_dsn is None:
        return False
    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        environment=settings.sentry_environment,
        release=f"stemify@{__version__}",
        traces_sample_rate=settings.sentry_traces_sample_rate,
        transport=transport,
        # Log lines become breadcrumbs; ERROR lines become events (each exception once).
        integrations=[LoggingIntegration(event_level=logging.ERROR)],
    )
    return True


@contextmanager
def job_scope(job_id: str) -> Iterator[None]:
    """Tag every event raised inside the block with the job's id."""
    with sentry_sdk.isolation_scope() as scope:
        scope.set_tag("job_id", job_id)
        yield
