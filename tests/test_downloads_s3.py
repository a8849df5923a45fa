"""Downloads with S3 storage, on a real SeaweedFS: the job's stem links are presigned GETs of
the objects (file name, Range, expiry, tampering refused by the server itself), the API's
stem route redirects to them or, in proxy mode, passes the bytes through, and the zip is
streamed from the objects."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from support.live import Live, add_key, error_of, finished_job, live_app, settings_for
from support.processes import Receiver

from stemify.jobs.model import Job
from stemify.jobs.signing import LinkSigner
from stemify.storage.s3_presign import S3Presigner

pytestmark = pytest.mark.api

MakeAudio = Callable[..., Path]
SECRET = "a-known-secret-key-for-s3-links"
PREFIX = "deploy/one"
SONG = "Café del mar.mp3"


@pytest.fixture
def make_live(s3: Any, tmp_path: Path, model_dir: Path) -> Iterator[Callable[..., Live]]:
    """The live app on S3 storage (a fresh bucket), settings overridden by keyword."""
    with ExitStack() as stack:

        def make(**overrides: Any) -> Live:
            settings = settings_for(
                tmp_path / "data",
                model_dir,
                secret_key=SECRET,
                storage_url=f"s3://{s3.name}/{PREFIX}",
                **overrides,
            )
            return stack.enter_context(live_app(settings))

        yield make


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def object_bytes(s3: Any, job: Job, stem: str) -> bytes:
    """The stem as the bucket holds it, read with the admin's own client."""
    answer = s3.client.get_object(Bucket=s3.name, Key=f"{PREFIX}/{job.stems[stem].key}")
    data: bytes = answer["Body"].read()
    return data


def owned_job(
    make_live: Callable[..., Live], make_audio: MakeAudio, **overrides: Any
) -> tuple[Live, str, Job]:
    """The live app, the key of "owner" and a finished job of theirs."""
    live = make_live(**overrides)
    owner = add_key(live.keys, "owner")
    return live, owner, finished_job(live, make_audio, "owner")


def job_json(live: Live, key: str, job: Job) -> dict[str, Any]:
    with live.client(key) as api:
        response = api.get(f"/jobs/{job.id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_job_links_are_presigned_gets_of_the_objects(
    make_live: Callable[..., Live], s3: Any, make_audio: MakeAudio
) -> None:
    live = make_live()
    owner = add_key(live.keys, "owner")
    job = finished_job(live, make_audio, "owner", input_name=SONG)
    body = job_json(live, owner, job)
    assert body["link"] == "s3"
    stems = {s["name"]: s["url"] for s in body["stems"]}
    assert set(stems) == {"vocals", "drums"}
    for name, url in stems.items():
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}" == s3.server.endpoint
        assert parts.path == f"/{s3.name}/{PREFIX}/jobs/{job.id}/stems/{name}.wav"
        signed = query(url)
        assert signed["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
        assert s3.server.secret_key not in url
        # The job links' expiry rule: the TTL (6 h) is past the job's own expiry (1 h).
        signed_at = datetime.strptime(signed["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        assert job.expires_at is not None
        end = signed_at.timestamp() + int(signed["X-Amz-Expires"])
        assert abs(end - int(job.expires_at.timestamp())) <= 1
    # The zip is no object: it stays the API's signed link.
    assert body["zip_url"].startswith(f"/api/v1/jobs/{job.id}/stems.zip?expires=")
    # The same links on the next read (SSE compares the JSON).
    assert job_json(live, owner, job)["stems"] == body["stems"]

    with httpx.Client(timeout=20) as browser:  # no key: the link is enough
        for name, url in stems.items():
            response = browser.get(url)
            assert response.status_code == 200, response.text
            assert response.content == object_bytes(s3, job, name)
            assert response.headers["content-disposition"] == (
                f'attachment; filename="Caf_ del mar-{name}.wav"; '
                f"filename*=UTF-8''Caf%C3%A9%20del%20mar-{name}.wav"
            )
        ranged = browser.get(stems["drums"], headers={"Range": "bytes=100-199"})
        assert ranged.status_code == 206
        assert ranged.content == object_bytes(s3, job, "drums")[100:200]
        size = len(object_bytes(s3, job, "drums"))
        assert ranged.headers["content-range"] == f"bytes 100-199/{size}"


def test_tampered_or_expired_presigned_links_are_refused_by_s3(
    make_live: Callable[..., Live], s3: Any, make_audio: MakeAudio
) -> None:
    live = make_live()
    owner = add_key(live.keys, "owner")
    job, other = finished_job(live, make_audio, "owner"), finished_job(live, make_audio, "owner")
    url = {s["name"]: s["url"] for s in job_json(live, owner, job)["stems"]}["vocals"]
    signature = query(url)["X-Amz-Signature"]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    tampered = {
        "another signature": url.replace(signature, flipped),
        "another stem": url.replace("/stems/vocals.wav", "/stems/drums.wav"),
        "another job": url.replace(job.id, other.id),
        "a later expiry": url.replace(
            f"X-Amz-Expires={query(url)['X-Amz-Expires']}", "X-Amz-Expires=604800"
        ),
        "another file name": url.replace("vocals.wav%22", "evil.exe%22"),
    }
    presigner = S3Presigner(live.services.storage)  # type: ignore[arg-type]
    with httpx.Client(timeout=20) as browser:
        assert browser.get(url).status_code == 200
        for what, bad in tampered.items():
            assert bad != url, what
            assert browser.get(bad).status_code == 403, what
        # Seconds of margin: on a loaded machine the first request may come well after signing.
        ends = int(time.time()) + 5
        short = presigner.url(job.stems["vocals"].key, ends, "attachment")
        assert browser.get(short).status_code == 200
        time.sleep(max(0.0, ends - time.time()) + 1.1)  # past its end
        expired = browser.get(short)
        assert expired.status_code == 403 and "expired" in expired.text


def test_stem_route_redirects_to_the_presigned_link_after_the_usual_checks(
    make_live: Callable[..., Live], s3: Any, make_audio: MakeAudio
) -> None:
    live = make_live()
    owner, stranger = add_key(live.keys, "owner"), add_key(live.keys, "stranger")
    job = finished_job(live, make_audio, "owner")
    links = {s["name"]: s["url"] for s in job_json(live, owner, job)["stems"]}
    with live.client(owner) as api:
        redirect = api.get(f"/jobs/{job.id}/stems/vocals")
        assert redirect.status_code == 307
        assert redirect.headers["location"] == links["vocals"]
        assert redirect.headers["cache-control"] == "no-store"
        followed = api.get(
            f"/jobs/{job.id}/stems/drums", headers={"Range": "bytes=0-9"}, follow_redirects=True
        )
        assert followed.status_code == 206
        assert followed.content == object_bytes(s3, job, "drums")[:10]
        assert followed.url.host == urlsplit(s3.server.endpoint).hostname  # served by S3
        error_of(api.get(f"/jobs/{job.id}/stems/bass"), 404, "not_found")
        # The page may fetch from the bucket (its player), and from nowhere else.
        csp = api.get("/health").headers["content-security-policy"]
        assert f"connect-src 'self' {s3.server.endpoint};" in csp
        assert f"media-src 'self' blob: {s3.server.endpoint};" in csp
    # Auth and ownership are checked before any redirect.
    with live.client() as anonymous:
        error_of(anonymous.get(f"/jobs/{job.id}/stems/vocals"), 401, "unauthorized")
    with live.client(stranger) as api:
        error_of(api.get(f"/jobs/{job.id}/stems/vocals"), 404, "not_found")
    # The API's own signed link (as older job JSON carried) redirects too; tampered, it is 403.
    signer = LinkSigner(SECRET.encode(), 3600)
    signed = f"/jobs/{job.id}/stems/vocals?{signer.query(job.id, 'stem:vocals', 2**31)}"
    with live.client() as anonymous:
        assert anonymous.get(signed).status_code == 307
        error_of(anonymous.get(signed.replace("vocals?", "drums?")), 403, "forbidden")


def test_proxy_mode_passes_the_bytes_through(
    make_live: Callable[..., Live], s3: Any, make_audio: MakeAudio
) -> None:
    live = make_live(download_mode="proxy")
    owner = add_key(live.keys, "owner")
    job = finished_job(live, make_audio, "owner", input_name=SONG)
    body = job_json(live, owner, job)
    assert body["link"] == "api"  # clients cannot reach the bucket: the API's links
    url = {s["name"]: s["url"] for s in body["stems"]}["vocals"]
    assert url.startswith(f"/api/v1/jobs/{job.id}/stems/vocals?expires=")
    with live.client(owner) as api:  # nothing to fetch from the bucket: the CSP stays closed
        assert "connect-src 'self';" in api.get("/health").headers["content-security-policy"]
    whole = object_bytes(s3, job, "vocals")
    with httpx.Client(base_url=live.root, timeout=20) as browser:
        response = browser.get(url)
        assert response.status_code == 200 and response.content == whole
        assert response.headers["content-type"] == "audio/wav"
        assert response.headers["content-disposition"].startswith(
            'attachment; filename="Caf_ del mar-vocals.wav"'
        )
        ranged = browser.get(url, headers={"Range": "bytes=-50"})
        assert ranged.status_code == 206 and ranged.content == whole[-50:]
        size = len(whole)
        assert ranged.headers["content-range"] == f"bytes {size - 50}-{size - 1}/{size}"
        middle = browser.get(url, headers={"Range": "bytes=10-19"})
        assert middle.status_code == 206 and middle.content == whole[10:20]
        refused = browser.get(url, headers={"Range": f"bytes={len(whole)}-"})
        message = error_of(refused, 416, "range_not_satisfiable")
        assert str(len(whole)) in message
        assert refused.headers["content-range"] == f"bytes */{len(whole)}"


@pytest.mark.parametrize("mode", ["redirect", "proxy"])
def test_zip_of_an_s3_job_is_streamed_from_the_objects(
    make_live: Callable[..., Live], s3: Any, make_audio: MakeAudio, mode: str
) -> None:
    live, owner, job = owned_job(make_live, make_audio, download_mode=mode)
    zip_url = job_json(live, owner, job)["zip_url"]
    with httpx.Client(base_url=live.root, timeout=20) as browser:
        response = browser.get(zip_url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.testzip() is None
    assert sorted(archive.namelist()) == ["drums.wav", "vocals.wav"]
    for name in ("drums", "vocals"):
        assert archive.read(f"{name}.wav") == object_bytes(s3, job, name)


@pytest.mark.parametrize("mode", ["redirect", "proxy"])
def test_a_missing_object_is_a_404_in_the_one_error_shape(
    make_live: Callable[..., Live], s3: Any, make_audio: MakeAudio, mode: str
) -> None:
    live, owner, job = owned_job(make_live, make_audio, download_mode=mode)
    s3.client.delete_object(Bucket=s3.name, Key=f"{PREFIX}/{job.stems['vocals'].key}")
    with live.client(owner) as api:
        message = error_of(api.get(f"/jobs/{job.id}/stems/vocals"), 404, "not_found")
        assert "vocals" in message
        error_of(api.get(f"/jobs/{job.id}/stems.zip"), 404, "not_found")
        # The other stem is still there.
        assert api.get(f"/jobs/{job.id}/stems/drums", follow_redirects=True).status_code == 200


def test_webhook_carries_presigned_stem_links(
    make_live: Callable[..., Live], s3: Any, make_audio: MakeAudio
) -> None:
    receiver = Receiver()
    try:
        live = make_live(public_url="http://placeholder", allow_loopback_urls=True)
        job = finished_job(live, make_audio)
        job.webhook_url = receiver.url
        webhooks = replace(live.services.jobs.webhooks, base_url=f"{live.root}/api/v1")
        webhooks.send(job)
        payload = json.loads(receiver.bodies[0][0])
        assert payload["link"] == "s3"
        for stem in payload["stems"]:
            assert stem["url"].startswith(f"{s3.server.endpoint}/{s3.name}/{PREFIX}/jobs/")
            response = httpx.get(stem["url"])  # the receiver needs no key
            assert response.content == object_bytes(s3, job, stem["name"])
        assert payload["zip_url"].startswith(f"{live.root}/api/v1/jobs/{job.id}/stems.zip?")
        assert httpx.get(payload["zip_url"]).status_code == 200
    finally:
        receiver.close()
