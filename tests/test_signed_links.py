"""Signed, expiring stem and zip links: they work without an API key, anything tampered or
expired is 403 in the one error shape, and a key without a signature works as before."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from support.live import Live, add_key, error_of, finished_job, live_app, settings_for
from support.processes import Receiver

from stemify.jobs.signing import LinkSigner

pytestmark = pytest.mark.api

MakeAudio = Callable[..., Path]
SECRET = "a-known-secret-key-for-signing-links"


@pytest.fixture
def live(tmp_path: Path, model_dir: Path) -> Iterator[Live]:
    with live_app(settings_for(tmp_path, model_dir, secret_key=SECRET)) as running:
        yield running


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def with_query(url: str, **changes: str) -> str:
    params = {**query(url), **changes}
    return urlsplit(url).path + "?" + "&".join(f"{k}={v}" for k, v in params.items())


def test_signed_links_work_without_a_key(live: Live, make_audio: MakeAudio) -> None:
    owner = add_key(live.keys, "owner")
    job = finished_job(live, make_audio, owner="owner")
    with live.client(owner) as api:
        body = api.get(f"/jobs/{job.id}").json()
    stems = {s["name"]: s["url"] for s in body["stems"]}
    assert set(stems) == {"vocals", "drums"}
    # The TTL (6 h) is longer than the job's results live (1 h): the links end with the job.
    assert job.expires_at is not None
    assert int(query(stems["vocals"])["expires"]) == int(job.expires_at.timestamp())
    with httpx.Client(base_url=live.root, timeout=20) as browser:  # no key at all
        for name, url in stems.items():
            response = browser.get(url)
            assert response.status_code == 200, response.text
            stored = live.services.storage.read_range(job.stems[name].key, 0, None, 1 << 20)
            assert response.content == b"".join(stored)
        ranged = browser.get(stems["drums"], headers={"Range": "bytes=0-9"})
        assert ranged.status_code == 206 and len(ranged.content) == 10
        archive = zipfile.ZipFile(io.BytesIO(browser.get(body["zip_url"]).content))
        assert sorted(archive.namelist()) == ["drums.wav", "vocals.wav"]
        # Without a signature the key is needed, as before.
        plain = urlsplit(stems["vocals"]).path
        error_of(browser.get(plain), 401, "unauthorized")
    with live.client(owner) as api:
        assert api.get(plain.removeprefix("/api/v1")).status_code == 200


def test_tampered_or_expired_links_are_403(live: Live, make_audio: MakeAudio) -> None:
    owner = add_key(live.keys, "owner")
    job, other = finished_job(live, make_audio, "owner"), finished_job(live, make_audio, "owner")
    signer = LinkSigner(SECRET.encode(), 3600)
    expires = int(time.time()) + 600
    good = f"/api/v1/jobs/{job.id}/stems/vocals?{signer.query(job.id, 'stem:vocals', expires)}"
    sig = query(good)["sig"]
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    past = int(time.time()) - 1
    cases = {
        "another signature": with_query(good, sig=flipped),
        "a later expiry": with_query(good, expires=str(expires + 3600)),
        "another stem": good.replace("/stems/vocals", "/stems/drums"),
        "another job": good.replace(job.id, other.id),
        "the zip": f"/api/v1/jobs/{job.id}/stems.zip?{query_string(good)}",
        "no expiry": f"{urlsplit(good).path}?sig={sig}",
        "no signature": f"{urlsplit(good).path}?expires={expires}",
        "an expired link": f"{urlsplit(good).path}?{signer.query(job.id, 'stem:vocals', past)}",
        "another secret": f"{urlsplit(good).path}?"
        + LinkSigner(b"guess", 3600).query(job.id, "stem:vocals", expires),
        # What a webhook receiver, who holds the service secret, could compute.
        "the service secret itself": with_query(
            good, sig=raw_signature(SECRET.encode(), f"{job.id}\nstem:vocals\n{expires}")
        ),
        "garbage": with_query(good, sig="%00%ff" * 20),
    }
    with httpx.Client(base_url=live.root, timeout=20) as browser:
        assert browser.get(good).status_code == 200
        for what, bad in cases.items():
            message = error_of(browser.get(bad), 403, "forbidden")
            assert message, what
        assert "expired" in error_of(browser.get(cases["an expired link"]), 403, "forbidden")
        assert "not valid" in error_of(browser.get(cases["another stem"]), 403, "forbidden")
        # A valid key does not rescue a bad signature: the link itself is refused.
        response = browser.get(cases["another signature"], headers={"X-API-Key": owner})
        error_of(response, 403, "forbidden")
        for expiry in ("soon", "-1", "1e9", "١٢", "9" * 5000):
            error_of(browser.get(with_query(good, expires=expiry)), 403, "forbidden")


def query_string(url: str) -> str:
    return urlsplit(url).query


def raw_signature(key: bytes, message: str) -> str:
    digest = hmac.new(key, message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def test_signature_is_hmac_sha256_over_job_target_and_expiry() -> None:
    signer = LinkSigner(b"k", 3600)
    link_key = hmac.new(b"k", b"stemify download links v1", hashlib.sha256).digest()
    sig = query("/?" + signer.query("j1", "stem:vocals", 1_700_000_000))["sig"]
    assert sig == raw_signature(link_key, "j1\nstem:vocals\n1700000000")
    assert sig != raw_signature(b"k", "j1\nstem:vocals\n1700000000")
    now = datetime(2026, 1, 1, 12, 0, 7, tzinfo=UTC)
    # Stable between two reads a few seconds apart (an SSE stream must not see a change)...
    assert signer.expiry(now, None) == signer.expiry(now + timedelta(seconds=5), None)
    # ...never longer than the TTL, and never beyond the job's own expiry.
    assert now.timestamp() + 3600 - 300 < signer.expiry(now, None) <= now.timestamp() + 3600
    job_end = now + timedelta(minutes=10)
    assert signer.expiry(now, job_end) == int(job_end.timestamp())
    assert signer.verify("j1", "zip", int(now.timestamp()) - 1, "x", now) != ""


def test_webhook_carries_absolute_signed_links(
    tmp_path: Path, model_dir: Path, make_audio: MakeAudio
) -> None:
    receiver = Receiver()
    try:
        with live_app(
            settings_for(
                tmp_path,
                model_dir,
                secret_key=SECRET,
                public_url="http://placeholder",
                allow_loopback_urls=True,  # the receiver
            )
        ) as live:
            job = finished_job(live, make_audio)
            job.webhook_url = receiver.url
            # Links in webhooks are absolute, on the public address.
            webhooks = replace(live.services.jobs.webhooks, base_url=f"{live.root}/api/v1")
            webhooks.send(job)
            payload = json.loads(receiver.bodies[0][0])
            url = payload["stems"][0]["url"]
            assert url.startswith(f"{live.root}/api/v1/jobs/{job.id}/stems/") and "sig=" in url
            assert httpx.get(url).status_code == 200  # no key
            assert httpx.get(payload["zip_url"]).status_code == 200
    finally:
        receiver.close()
