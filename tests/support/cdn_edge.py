"""A CDN edge for the tests: an HTTP server on 127.0.0.1 that serves objects of a bucket on the
test S3 server by their key (``GET /<object key>``), and, when given a public key, only for
CloudFront signed URLs with a canned policy that it checks itself, as CloudFront does:

- ``Key-Pair-Id`` is the known one, ``Expires`` is in the future;
- ``Signature`` (CloudFront's URL-safe base64: ``-`` ``_`` ``~`` for ``+`` ``=`` ``/``) is an
  RSA PKCS#1 v1.5 SHA-1 signature over the canned policy
  ``{"Statement":[{"Resource":"<URL without those three parameters>","Condition":
  {"DateLessThan":{"AWS:EpochTime":<Expires>}}}]}``, written out here by hand (not by botocore,
  whose output this is checking).

Anything else is a 403 with a plain-text reason; a missing object a 404."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

_SIGNED = ("Expires", "Signature", "Key-Pair-Id")


@dataclass
class Edge:
    base_url: str  # http://127.0.0.1:<port>
    refusals: list[str] = field(default_factory=list)  # why each 403 was given


def canned_policy(resource: str, expires: int) -> bytes:
    return (
        '{"Statement":[{"Resource":"' + resource + '","Condition":{"DateLessThan":'
        '{"AWS:EpochTime":' + str(expires) + "}}}]}"
    ).encode()


def cloudfront_b64decode(text: str) -> bytes:
    return base64.b64decode(text.replace("-", "+").replace("_", "=").replace("~", "/"))


def refusal(
    url: str, public_key: rsa.RSAPublicKey, key_id: str, now: float | None = None
) -> str | None:
    """Why CloudFront would refuse the signed ``url`` (None: it is good)."""
    parts = urlsplit(url)
    params = parse_qsl(parts.query, keep_blank_values=True)
    signed = {k: v for k, v in params if k in _SIGNED}
    if set(signed) != set(_SIGNED):
        return "not signed: Expires, Signature and Key-Pair-Id are all needed"
    if signed["Key-Pair-Id"] != key_id:
        return f"unknown key pair {signed['Key-Pair-Id']!r}"
    if not signed["Expires"].isdigit():
        return "bad Expires"
    expires = int(signed["Expires"])
    if (time.time() if now is None else now) >= expires:
        return "expired"
    rest = urlencode([(k, v) for k, v in params if k not in _SIGNED])
    resource = f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{rest}" if rest else "")
    try:
        signature = cloudfront_b64decode(signed["Signature"])
        public_key.verify(
            signature, canned_policy(resource, expires), padding.PKCS1v15(), hashes.SHA1()
        )
    except (InvalidSignature, ValueError):
        return "signature does not verify"
    return None


@contextmanager
def cdn_edge(
    s3_client: Any,
    bucket: str,
    *,
    public_key: rsa.RSAPublicKey | None = None,
    key_id: str = "",
) -> Iterator[Edge]:
    """The edge in a thread; ``public_key`` None: a public CDN (no signature checked)."""
    edge = Edge("")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

        def do_GET(self) -> None:
            url = f"{edge.base_url}{self.path}"
            if public_key is not None:
                why = refusal(url, public_key, key_id)
                if why is not None:
                    edge.refusals.append(why)
                    self._answer(403, why.encode(), "text/plain")
                    return
            key = unquote(urlsplit(self.path).path.lstrip("/"))
            try:
                body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
            except s3_client.exceptions.NoSuchKey:
                self._answer(404, b"no such object", "text/plain")
                return
            self._answer(200, body, "application/octet-stream")

        def _answer(self, status: int, body: bytes, media_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", media_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    edge.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield edge
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
