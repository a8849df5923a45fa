"""Webhook signing and delivery, against a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import httpx
import pytest

from stemify.egress.urlguard import URLPolicy
from stemify.egress.webhooks import (
    EVENT_HEADER,
    MAX_RETRY_AFTER_S,
    SIGNATURE_HEADER,
    WebhookResult,
    deliver,
    deliver_guarded,
    encode_payload,
    sign,
    verify,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

SECRET = b"whsec_test_secret"
PAYLOAD: dict[str, Any] = {
    "job_id": "0f8e",
    "status": "succeeded",
    "stems": {"vocals": "/v1/jobs/0f8e/stems/vocals", "drums": "/v1/jobs/0f8e/stems/drums"},
    "title": "Café ☕",
}


# ---------------------------------------------------------------------------------------------
# sign / verify


def test_signature_round_trip() -> None:
    body = encode_payload(PAYLOAD)
    now = 1_700_000_000
    header = sign(SECRET, body, now)
    assert header.startswith(f"t={now},v1=")
    assert len(header.split("v1=")[1]) == 64
    assert verify(SECRET, body, header, now=now)
    assert verify(SECRET, body, header, now=now + 300)  # at the edge of the tolerance
    assert verify(SECRET, body, header, now=now - 60)  # a receiver clock a little behind


def test_signature_is_hmac_of_timestamp_dot_body() -> None:
    # Pinned so receivers in other languages can implement it from the docs.
    header = sign(b"key", b'{"a":1}', 1234)
    expected = hmac.new(b"key", b'1234.{"a":1}', hashlib.sha256).hexdigest()
    assert header == f"t=1234,v1={expected}"


def test_signature_fails_with_another_secret() -> None:
    body = encode_payload(PAYLOAD)
    header = sign(SECRET, body, 1000)
    assert not verify(b"another secret", body, header, now=1000)


def test_signature_fails_with_a_tampered_body() -> None:
    body = encode_payload(PAYLOAD)
    header = sign(SECRET, body, 1000)
    tampered = body.replace(b"succeeded", b"failed")
    assert not verify(SECRET, tampered, header, now=1000)
    assert not verify(SECRET, body + b" ", header, now=1000)


def test_signature_fails_when_expired_or_timestamp_changed() -> None:
    body = encode_payload(PAYLOAD)
    header = sign(SECRET, body, 1000)
    assert not verify(SECRET, body, header, now=1000 + 301)
    assert not verify(SECRET, body, header, now=1000 + 30, tolerance_s=10)
    assert not verify(SECRET, body, header, now=1000 - 301)  # from the future
    replayed = header.replace("t=1000", "t=2000")  # a fresh timestamp on an old signature
    assert not verify(SECRET, body, replayed, now=2000)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        "t=1000",
        "v1=abc",
        "t=abc,v1=00",
        "t=-1000,v1=00",
        "t=1000,t=1000,v1=00",
        "t=１０００,v1=00",  # full-width digits are digits to str.isdigit
    ],
)
def test_malformed_headers_do_not_verify(header: str) -> None:
    assert not verify(SECRET, b"{}", header, now=1000)


def test_several_signatures_for_secret_rotation() -> None:
    body = b"{}"
    good = sign(SECRET, body, 1000).split(",")[1]
    old = sign(b"old secret", body, 1000).split(",")[1]
    assert verify(SECRET, body, f"t=1000,{old},{good}", now=1000)
    assert not verify(SECRET, body, f"t=1000,{old}", now=1000)


def test_encoding_is_compact_and_sorted() -> None:
    assert encode_payload({"b": 1, "a": [1, 2], "c": "é"}) == '{"a":[1,2],"b":1,"c":"é"}'.encode()
    with pytest.raises(ValueError):
        encode_payload({"x": float("nan")})


# ---------------------------------------------------------------------------------------------
# A receiver that answers from a script and records every delivery.


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    server: http.server.ThreadingHTTPServer
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    """(status, extra headers) per request, in order; 200 once it runs out."""
    delay_s: list[float] = field(default_factory=list)
    """Seconds to wait before answering, per request (0 once it runs out)."""
    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hooks/stemify"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    box: list[Receiver] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            rec = box[0]
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            with rec.lock:
                rec.deliveries.append(Delivery(self.path, dict(self.headers.items()), body))
                status, extra = rec.script.pop(0) if rec.script else (200, {})
                delay = rec.delay_s.pop(0) if rec.delay_s else 0.0
            if delay:
                time.sleep(delay)
            try:
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
            except OSError:
                pass  # the sender timed out and left

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    box.append(Receiver(server))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield box[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class Sleeps:
    """Records the waits deliver asks for, without waiting."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def assert_signed(delivery: Delivery) -> None:
    assert verify(SECRET, delivery.body, delivery.headers[SIGNATURE_HEADER])


def test_delivered_first_time(receiver: Receiver) -> None:
    result = deliver(receiver.url, PAYLOAD, SECRET, sleep=Sleeps())
    assert result == WebhookResult(delivered=True, attempts=1, status=200, error=None)

    [d] = receiver.deliveries
    assert d.path == "/hooks/stemify"
    assert d.headers["Content-Type"] == "application/json"
    assert d.headers["User-Agent"] == "stemify-webhook"
    assert d.headers[EVENT_HEADER] == "succeeded"
    assert d.body == encode_payload(PAYLOAD)
    assert json.loads(d.body) == PAYLOAD
    assert_signed(d)


def test_retries_500_then_delivers(receiver: Receiver) -> None:
    receiver.script = [(500, {}), (500, {})]
    sleeps = Sleeps()
    result = deliver(receiver.url, PAYLOAD, SECRET, backoff_s=0.5, sleep=sleeps)
    assert result == WebhookResult(delivered=True, attempts=3, status=200, error=None)
    assert len(receiver.deliveries) == 3
    for d in receiver.deliveries:
        assert_signed(d)
        assert d.body == encode_payload(PAYLOAD)
    assert sleeps.calls == [0.5, 1.0]


def test_always_500_gives_up_after_attempts(receiver: Receiver) -> None:
    receiver.script = [(500, {})] * 10
    sleeps = Sleeps()
    result = deliver(receiver.url, PAYLOAD, SECRET, attempts=4, backoff_s=1.0, sleep=sleeps)
    assert result == WebhookResult(
        delivered=False, attempts=4, status=500, error="the receiver answered HTTP 500"
    )
    assert len(receiver.deliveries) == 4
    assert sleeps.calls == [1.0, 2.0, 4.0]  # no wait after the last attempt


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_4xx_gives_up_at_once(receiver: Receiver, status: int) -> None:
    receiver.script = [(status, {})]
    sleeps = Sleeps()
    result = deliver(receiver.url, PAYLOAD, SECRET, sleep=sleeps)
    assert result == WebhookResult(
        delivered=False, attempts=1, status=status, error=f"the receiver answered HTTP {status}"
    )
    assert len(receiver.deliveries) == 1
    assert sleeps.calls == []


@pytest.mark.parametrize("status", [408, 429, 502, 503])
def test_retryable_statuses(receiver: Receiver, status: int) -> None:
    receiver.script = [(status, {})]
    result = deliver(receiver.url, PAYLOAD, SECRET, sleep=Sleeps())
    assert result.delivered
    assert result.attempts == 2


def test_retry_after_is_honoured_and_capped(receiver: Receiver) -> None:
    receiver.script = [(503, {"Retry-After": "7"}), (429, {"Retry-After": "86400"}), (500, {})]
    sleeps = Sleeps()
    result = deliver(receiver.url, PAYLOAD, SECRET, backoff_s=0.25, sleep=sleeps)
    assert result.delivered
    assert result.attempts == 4
    assert sleeps.calls == [7.0, MAX_RETRY_AFTER_S, 1.0]


def test_retry_after_as_a_date(receiver: Receiver) -> None:
    receiver.script = [(503, {"Retry-After": formatdate(time.time() + 30, usegmt=True)})]
    sleeps = Sleeps()
    assert deliver(receiver.url, PAYLOAD, SECRET, sleep=sleeps).delivered
    [waited] = sleeps.calls
    assert 25 <= waited <= 31


def test_redirects_are_not_followed(receiver: Receiver) -> None:
    receiver.script = [(302, {"Location": "http://127.0.0.1:9/elsewhere"})]
    result = deliver(receiver.url, PAYLOAD, SECRET, sleep=Sleeps())
    assert not result.delivered
    assert result.attempts == 1
    assert result.status == 302
    assert result.error is not None and "redirect" in result.error
    assert len(receiver.deliveries) == 1


def test_connection_refused_is_retried_then_fails() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port any more.
    sleeps = Sleeps()
    result = deliver(f"http://127.0.0.1:{port}/hook", PAYLOAD, SECRET, attempts=3, sleep=sleeps)
    assert not result.delivered
    assert result.attempts == 3
    assert result.status is None
    assert result.error is not None and result.error.startswith("ConnectError:")
    assert sleeps.calls == [1.0, 2.0]


def test_timeout_is_retried(receiver: Receiver) -> None:
    receiver.delay_s = [1.0]
    result = deliver(receiver.url, PAYLOAD, SECRET, timeout_s=0.2, sleep=Sleeps())
    assert result == WebhookResult(delivered=True, attempts=2, status=200, error=None)
    assert len(receiver.deliveries) == 2


def test_uses_the_given_client_without_following_redirects(receiver: Receiver) -> None:
    receiver.script = [(307, {"Location": receiver.url})]
    with httpx.Client(follow_redirects=True) as client:
        result = deliver(receiver.url, PAYLOAD, SECRET, client=client, sleep=Sleeps())
        assert not client.is_closed  # the caller's client stays the caller's
    assert result.status == 307
    assert len(receiver.deliveries) == 1


@pytest.mark.parametrize("url", ["", "ftp://127.0.0.1/hook", "not a url", "http://[::1"])
def test_invalid_url_is_a_result_not_an_exception(url: str) -> None:
    sleeps = Sleeps()
    result = deliver(url, PAYLOAD, SECRET, sleep=sleeps)
    assert not result.delivered
    assert result.attempts == 1
    assert result.error
    assert sleeps.calls == []


def test_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError):
        deliver("http://127.0.0.1:9/", PAYLOAD, SECRET, attempts=0)


def test_guarded_delivery_refuses_a_local_receiver(receiver: Receiver) -> None:
    result = deliver_guarded(receiver.url, PAYLOAD, SECRET, URLPolicy(), attempts=3)
    assert not result.delivered and result.attempts == 0
    assert result.error is not None and "not allowed" in result.error
    assert "127.0.0.1" in result.error
    assert receiver.deliveries == []  # not one byte reached it


def test_guarded_delivery_goes_through_the_checking_proxy(receiver: Receiver) -> None:
    result = deliver_guarded(receiver.url, PAYLOAD, SECRET, URLPolicy(allow_loopback=True))
    assert result == WebhookResult(delivered=True, attempts=1, status=200, error=None)
    [d] = receiver.deliveries
    assert d.path == "/hooks/stemify" and d.body == encode_payload(PAYLOAD)
    assert_signed(d)
