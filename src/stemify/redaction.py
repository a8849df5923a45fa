"""Keeping secrets out of what is printed: passwords in URLs."""

from __future__ import annotations

import re

# scheme://user:password@host → scheme://user:***@host (and scheme://:password@host).
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@")


def redact_url(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\g<head>***@", text)
