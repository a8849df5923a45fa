"""Signed webhook deliveries: a job's outcome POSTed as JSON to the URL its client gave.

Receivers are checked like links (:mod:`stemify.egress.urlguard`): :func:`deliver_guarded` refuses
a local or private address and connects only through a
:class:`~stemify.egress.guarded_proxy.GuardedProxy`, so a webhook cannot reach inside the network
either, DNS rebinding included.

The signature header is ``t=<unix time>,v1=<hex HMAC-SHA256 of "<t>." + body>``: the
timestamp is signed with the body, so a captured delivery cannot be replayed later
(:func:`verify` rejects it outside ``tolerance_s``). Each attempt is signed afresh.
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import httpx

from stemify.egress.guarded_proxy import GuardedProxy
from stemify.egress.urlguard import URLPolicy, check_url
from stemify.errors import StemifyError

SIGNATURE_HEADER = "X-Stemify-Signature"
EVENT_HEADER = "X-Stemify-Event"
USER_AGENT = "stemify-webhook"
MAX_RETRY_AFTER_S = 60.0
"""A receiver's Retry-After is honoured up to this; the worker must not sleep for hours."""

_RETRY_STATUSES = {408, 429}
_RETRY_ERRORS = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    httpx.ProxyError,
)


@dataclass(frozen=True)
class WebhookResult:
    delivered: bool
    attempts: int
    status: int | None
    """HTTP status of the last response; None if the last attempt got no response."""
    error: str | None
    """Why the last attempt failed, one line; None when delivered."""


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    return f"t={timestamp},v1={_digest(secret, body, timestamp)}"


def verify(
    secret: bytes, body: bytes, header: str, *, tolerance_s: int = 300, now: int | None = None
) -> bool:
    """True if ``header`` signs ``body`` with ``secret`` and its timestamp is within
    ``tolerance_s`` of ``now`` (either side: clocks drift). Never raises on a bad header.
    Several ``v1=`` entries are accepted, so a sender can sign with an old and a new secret
    while they are rotated."""
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if name == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit():
                return False
            timestamp = int(value)
        elif name == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        return False
    current = int(time.time()) if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = _digest(secret, body, timestamp)
    # Every candidate is compared, in constant time, so timing says nothing about which.
    matches = [hmac.compare_digest(expected.encode(), s.encode()) for s in signatures]
    return any(matches)


def encode_payload(payload: dict[str, Any]) -> bytes:
    """Compact, sorted JSON: the exact bytes that are signed and sent."""
    return json.dumps(
        payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def deliver(
    url: str,
    payload: dict[str, Any],
    secret: bytes,
    *,
    client: httpx.Client | None = None,
    attempts: int = 5,
    backoff_s: float = 1.0,
    timeout_s: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> WebhookResult:
    """POST ``payload`` to ``url``, retrying 5xx, 408, 429, connection errors and timeouts
    with exponential backoff (``backoff_s``, then twice that, ...; a Retry-After in seconds
    or as a date replaces the wait, up to :data:`MAX_RETRY_AFTER_S`). Any other answer ends
    delivery at once: 2xx delivered, 3xx (redirects are not followed) and 4xx refused.

    Never raises for a failed delivery: the result says what happened. A payload that
    cannot be encoded as JSON is a programming error and does raise (TypeError/ValueError).
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    body = encode_payload(payload)
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if "status" in payload:
        headers[EVENT_HEADER] = str(payload["status"])

    status: int | None = None
    error: str | None = None
    with _client_or(client, timeout_s) as http:
        for attempt in range(1, attempts + 1):
            headers[SIGNATURE_HEADER] = sign(secret, body, int(time.time()))
            retry_after: float | None = None
            try:
                # A stream, so a receiver answering with a huge body costs nothing to read.
                with http.stream(
                    "POST",
                    url,
                    content=body,
                    headers=headers,
                    timeout=timeout_s,
                    follow_redirects=False,
                ) as response:
                    status = response.status_code
                    retry_after = _retry_after(response.headers.get("Retry-After"))
            except _RETRY_ERRORS as e:
                status, error = None, _describe(e)
            except (httpx.HTTPError, httpx.InvalidURL) as e:
                # Invalid URL, unsupported scheme, a local protocol error: retrying cannot help.
                return WebhookResult(False, attempt, None, _describe(e))
            else:
                if 200 <= status < 300:
                    return WebhookResult(True, attempt, status, None)
                error = f"the receiver answered HTTP {status}"
                if not (status >= 500 or status in _RETRY_STATUSES):
                    if 300 <= status < 400:
                        error += " (a redirect: webhooks do not follow redirects)"
                    return WebhookResult(False, attempt, status, error)
            if attempt < attempts:
                delay = backoff_s * 2 ** (attempt - 1)
                sleep(min(retry_after, MAX_RETRY_AFTER_S) if retry_after is not None else delay)
    return WebhookResult(False, attempts, status, error)


def deliver_guarded(
    url: str,
    payload: dict[str, Any],
    secret: bytes,
    policy: URLPolicy,
    *,
    attempts: int = 5,
    timeout_s: float = 10.0,
) -> WebhookResult:
    """:func:`deliver`, to a receiver that ``policy`` allows, over connections that the guarded
    proxy checks again (the address may change between this check and a retry)."""
    try:
        check_url(url, policy)
    except StemifyError as e:
        return WebhookResult(False, 0, None, e.message)
    with (
        GuardedProxy(policy, timeout_s=timeout_s) as proxy,
        httpx.Client(proxy=proxy.url, timeout=timeout_s, follow_redirects=False) as http,
    ):
        result = deliver(url, payload, secret, client=http, attempts=attempts, timeout_s=timeout_s)
    if not result.delivered and proxy.error is not None:
        # The proxy's own answer (403, 502) says less than why it gave it.
        return replace(result, status=None, error=proxy.error.message)
    return result


def _digest(secret: bytes, body: bytes, timestamp: int) -> str:
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


@contextmanager
def _client_or(client: httpx.Client | None, timeout_s: float) -> Iterator[httpx.Client]:
    if client is not None:
        yield client
        return
    with httpx.Client(timeout=timeout_s, follow_redirects=False) as own:
        yield own


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _describe(e: Exception) -> str:
    kind = type(e).__name__
    detail = " ".join(str(e).split())
    return f"{kind}: {detail}" if detail else kind
