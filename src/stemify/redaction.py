"""Keeping secrets out of what is printed or reported: known secret values, and the password
of every URL, wherever they appear in a text."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stemify.settings import Settings

# scheme://user:password@host → scheme://user:***@host (and scheme://:password@host).
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@")


def redact_url(text: str, mask: str = "***") -> str:
    """``text`` with the password of every URL in it replaced by ``mask``."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{mask}@", text)


def secret_values(settings: Settings) -> list[str]:
    """Values nothing may show (URL passwords are masked wherever they appear anyway)."""
    found = [settings.secret_key, settings.database_url, settings.redis_url, settings.sentry_dsn]
    return [s.get_secret_value() for s in found if s is not None]


class Redactor:
    """Replaces known secret values and URL passwords in a text."""

    MASK = "**********"

    def __init__(self, secrets: Iterable[str]) -> None:
        # Short values would mask ordinary words; real secrets are long.
        self._secrets = sorted({s for s in secrets if len(s) >= 8}, key=len, reverse=True)

    def clean(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, self.MASK)
        # Every line of the log passes here: the URL pattern only where it can match.
        return redact_url(text, self.MASK) if "@" in text else text
