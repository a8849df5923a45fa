"""Signed, expiring download links: HMAC-SHA256 over job id, target and expiry.

A signed link is a bearer token for one stem (or the zip) of one job until it expires, so a
browser's ``<audio src>`` or a shared link works without the API key.

Links are signed with a key of their own, derived from the service secret: webhook receivers
hold that secret (they verify deliveries with it) and must not be able to mint links to other
callers' jobs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from dataclasses import dataclass, field
from datetime import datetime

ZIP = "zip"
# Expiries are rounded down to a step, so the job JSON stays the same between two reads and
# an SSE stream does not send a "change" every second just because time moved on.
MAX_STEP_S = 300
_PURPOSE = b"stemify download links v1"


def _signature(secret: bytes, job_id: str, target: str, expires: int) -> str:
    message = f"{job_id}\n{target}\n{expires}".encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def target_of(stem: str | None) -> str:
    """What a link grants: ``stem:<name>``, or ``zip`` for every stem (no stem is "zip:")."""
    return ZIP if stem is None else f"stem:{stem}"


@dataclass(frozen=True)
class LinkSigner:
    secret: bytes
    """The service secret; links are signed with a key derived from it."""
    ttl_s: float
    _key: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        key = hmac.new(self.secret, _PURPOSE, hashlib.sha256).digest()
        object.__setattr__(self, "_key", key)

    def expiry(self, now: datetime, job_expires_at: datetime | None) -> int:
        step = max(1, min(MAX_STEP_S, int(self.ttl_s) // 10))
        expires = (int(now.timestamp() + self.ttl_s) // step) * step
        if job_expires_at is not None:
            expires = min(expires, math.floor(job_expires_at.timestamp()))
        return expires

    def query(self, job_id: str, target: str, expires: int) -> str:
        return f"expires={expires}&sig={_signature(self._key, job_id, target, expires)}"

    def verify(self, job_id: str, target: str, expires: int, signature: str, now: datetime) -> str:
        """The reason the link is refused, or "" when it is good. Constant-time compare."""
        expected = _signature(self._key, job_id, target, expires)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            return "the link's signature is not valid"
        if now.timestamp() >= expires:
            return "the link has expired; read the job again for a fresh one"
        return ""
