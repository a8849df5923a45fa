"""CDN links (STEMIFY_CDN_BASE_URL): public objects by key, or CloudFront signed URLs that a
stand-in CDN edge (tests/support/cdn_edge.py) verifies with the public key before serving the
object from SeaweedFS. And the settings checked at start."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from support.cdn_edge import Edge, cdn_edge, refusal
from support.live import Live, add_key, finished_job, live_app, settings_for

from stemify.errors import ConfigurationError
from stemify.jobs.model import Job
from stemify.storage.cdn import CdnLinks, load_private_key
from stemify.storage.s3_presign import MAX_LIFETIME_S

MakeAudio = Callable[..., Path]
PREFIX = "cdn-prefix"
KEY_ID = "K2JCJMDEHXQW5F"


def pem(key: Any) -> bytes:
    data: bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return data


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def key_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Path:
    path = tmp_path / "cdn-private-key.pem"
    path.write_bytes(pem(rsa_key))
    path.chmod(0o600)
    return path


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


@pytest.fixture
def cdn_live(
    s3: Any, tmp_path: Path, model_dir: Path, rsa_key: rsa.RSAPrivateKey, key_file: Path
) -> Iterator[Callable[..., tuple[Live, Edge]]]:
    """The live app on S3 storage with its links through an edge in front of the bucket;
    ``signed``: CloudFront signed links, which the edge verifies."""
    with ExitStack() as stack:

        def make(*, signed: bool) -> tuple[Live, Edge]:
            edge = stack.enter_context(
                cdn_edge(
                    s3.client,
                    s3.name,
                    public_key=rsa_key.public_key() if signed else None,
                    key_id=KEY_ID,
                )
            )
            keys = {"cdn_key_id": KEY_ID, "cdn_private_key_file": key_file} if signed else {}
            settings = settings_for(
                tmp_path / "data",
                model_dir,
                secret_key="cdn-test-secret",
                storage_url=f"s3://{s3.name}/{PREFIX}",
                cdn_base_url=edge.base_url + "/",
                **keys,
            )
            return stack.enter_context(live_app(settings)), edge

        yield make


def stem_links(live: Live, key: str, job_id: str) -> tuple[str, dict[str, str]]:
    with live.client(key) as api:
        body = api.get(f"/jobs/{job_id}").json()
    return body["link"], {s["name"]: s["url"] for s in body["stems"]}


def cdn_job(
    cdn_live: Callable[..., tuple[Live, Edge]], make_audio: MakeAudio, *, signed: bool
) -> tuple[Live, Edge, str, Job, dict[str, str]]:
    """A finished job of "owner" on the CDN set-up; its stem links, which must be CDN ones."""
    live, edge = cdn_live(signed=signed)
    owner = add_key(live.keys, "owner")
    job = finished_job(live, make_audio, "owner")
    kind, links = stem_links(live, owner, job.id)
    assert kind == "cdn"
    return live, edge, owner, job, links


def stored(s3: Any, key: str) -> bytes:
    data: bytes = s3.client.get_object(Bucket=s3.name, Key=f"{PREFIX}/{key}")["Body"].read()
    return data


@pytest.mark.api
def test_public_cdn_links_are_the_base_and_the_object_key(
    cdn_live: Callable[..., tuple[Live, Edge]], s3: Any, make_audio: MakeAudio
) -> None:
    live, edge, owner, job, links = cdn_job(cdn_live, make_audio, signed=False)
    for name, url in links.items():
        assert url == f"{edge.base_url}/{PREFIX}/jobs/{job.id}/stems/{name}.wav"
        response = httpx.get(url)
        assert response.status_code == 200 and response.content == stored(s3, job.stems[name].key)
    with live.client(owner) as api:  # the API route sends clients there too
        redirect = api.get(f"/jobs/{job.id}/stems/vocals")
    assert redirect.status_code == 307 and redirect.headers["location"] == links["vocals"]


@pytest.mark.api
def test_signed_cdn_links_verify_with_the_public_key_and_expire(
    cdn_live: Callable[..., tuple[Live, Edge]],
    s3: Any,
    make_audio: MakeAudio,
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    live, edge, owner, job, links = cdn_job(cdn_live, make_audio, signed=True)
    url = links["vocals"]
    signed = query(url)
    assert set(signed) == {"Expires", "Signature", "Key-Pair-Id"}
    assert signed["Key-Pair-Id"] == KEY_ID
    assert job.expires_at is not None  # the job links' rule: capped by the job's expiry
    assert int(signed["Expires"]) == int(job.expires_at.timestamp())
    assert urlsplit(url).path == f"/{PREFIX}/jobs/{job.id}/stems/vocals.wav"
    assert stem_links(live, owner, job.id)[1] == links  # the same on the next read

    response = httpx.get(url)
    assert response.status_code == 200, response.text
    assert response.content == stored(s3, job.stems["vocals"].key)
    assert edge.refusals == []

    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = CdnLinks(edge.base_url, f"{PREFIX}/", None)
    plain = forged.url(job.stems["vocals"].key, 0, "")
    expires = int(signed["Expires"])
    tampered = {
        "another stem": url.replace("/stems/vocals.wav", "/stems/drums.wav"),
        "a later expiry": url.replace(f"Expires={expires}", f"Expires={expires + 3600}"),
        "another key pair id": url.replace(KEY_ID, "KOTHERKEYPAIR"),
        "no signature": plain,
        "another private key": _signed_with(other_key, plain, expires),
    }
    for what, bad in tampered.items():
        assert httpx.get(bad).status_code == 403, what
    assert edge.refusals == [
        "signature does not verify",
        "signature does not verify",
        "unknown key pair 'KOTHERKEYPAIR'",
        "not signed: Expires, Signature and Key-Pair-Id are all needed",
        "signature does not verify",
    ]
    # Expiry is honoured: a link that ends in a few seconds works, then is refused (seconds
    # of margin: on a loaded machine the first request may come well after the signing).
    ends = int(time.time()) + 5
    short = _signed_with(rsa_key, plain, ends)
    assert httpx.get(short).status_code == 200
    time.sleep(max(0.0, ends - time.time()) + 1.1)
    assert httpx.get(short).status_code == 403 and edge.refusals[-1] == "expired"


def _signed_with(key: rsa.RSAPrivateKey, url: str, expires: int) -> str:
    from datetime import UTC, datetime

    from botocore.signers import CloudFrontSigner

    from stemify.storage.cdn import rsa_sha1_signer

    signer = CloudFrontSigner(KEY_ID, rsa_sha1_signer(key))
    signed: str = signer.generate_presigned_url(
        url, date_less_than=datetime.fromtimestamp(expires, UTC)
    )
    return signed


@pytest.mark.unit
def test_the_edge_check_is_cloudfronts_canned_policy(rsa_key: rsa.RSAPrivateKey) -> None:
    """The stand-in edge's own check, against a link made by the production code."""
    links = CdnLinks("https://cdn.example.com/", "p/", None)
    plain = links.url("jobs/x/stems/a b.wav", 0, "")
    assert plain == "https://cdn.example.com/p/jobs/x/stems/a%20b.wav"
    good = _signed_with(rsa_key, plain, 2_000_000_000)
    assert refusal(good, rsa_key.public_key(), KEY_ID, now=1_999_999_999) is None
    assert refusal(good, rsa_key.public_key(), KEY_ID, now=2_000_000_000) == "expired"
    assert refusal(good + "&x=1", rsa_key.public_key(), KEY_ID, now=0) == (
        "signature does not verify"
    )


# ---- settings checked at start -------------------------------------------------------------


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """boto3 set up for a bucket (no server: nothing here sends a request)."""
    for name, value in {
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "test-access",
        "AWS_SECRET_ACCESS_KEY": "test-secret",
        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)


def start_error(make_services: Callable[..., Any], **settings: Any) -> str:
    with pytest.raises(ConfigurationError) as caught:
        make_services(**settings)
    return caught.value.message


@pytest.mark.unit
def test_cdn_settings_are_checked_at_start(
    make_services: Callable[..., Any], s3_env: None, key_file: Path, tmp_path: Path
) -> None:
    s3 = {"storage_url": "s3://stemify-bucket/p"}
    cdn = {"cdn_base_url": "https://cdn.example.com", **s3}
    assert "needs S3 storage" in start_error(make_services, cdn_base_url="https://cdn.example.com")
    assert "need STEMIFY_CDN_BASE_URL" in start_error(
        make_services, cdn_key_id=KEY_ID, cdn_private_key_file=key_file, **s3
    )
    assert "must be an http(s) URL" in start_error(
        make_services, **{**cdn, "cdn_base_url": "cdn.example.com"}
    )
    assert "no query" in start_error(
        make_services, **{**cdn, "cdn_base_url": "https://cdn.example.com/?a=1"}
    )
    assert "need both" in start_error(make_services, cdn_key_id=KEY_ID, **cdn)
    assert "need both" in start_error(make_services, cdn_private_key_file=key_file, **cdn)
    missing = tmp_path / "nowhere.pem"
    message = start_error(make_services, cdn_key_id=KEY_ID, cdn_private_key_file=missing, **cdn)
    assert message == f"STEMIFY_CDN_PRIVATE_KEY_FILE {missing} does not exist"
    message = start_error(make_services, cdn_key_id=KEY_ID, cdn_private_key_file=tmp_path, **cdn)
    assert message.startswith(f"STEMIFY_CDN_PRIVATE_KEY_FILE {tmp_path} cannot be read")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text(
        "-----BEGIN RSA PRIVATE KEY-----\nnot a key\n-----END RSA PRIVATE KEY-----\n"
    )
    message = start_error(make_services, cdn_key_id=KEY_ID, cdn_private_key_file=garbage, **cdn)
    assert "is not an unencrypted PEM private key" in message and "not a key" not in message
    ec_file = tmp_path / "ec.pem"
    ec_file.write_bytes(pem(ec.generate_private_key(ec.SECP256R1())))
    message = start_error(make_services, cdn_key_id=KEY_ID, cdn_private_key_file=ec_file, **cdn)
    assert "CloudFront needs RSA" in message
    # And good settings start, with links of the kind asked for.
    services = make_services(cdn_key_id=KEY_ID, cdn_private_key_file=key_file, **cdn)
    assert services.links.kind == "cdn" and services.links.origins == ("https://cdn.example.com",)


@pytest.mark.unit
def test_s3_link_lifetime_is_checked_at_start(
    make_services: Callable[..., Any], s3_env: None
) -> None:
    s3 = {"storage_url": "s3://stemify-bucket/p"}
    message = start_error(make_services, signed_url_ttl_s=MAX_LIFETIME_S + 1, **s3)
    assert "STEMIFY_SIGNED_URL_TTL_S" in message and "7 days" in message
    # Proxy mode has no presigned links, so no such bound; nor has local storage.
    assert make_services(signed_url_ttl_s=MAX_LIFETIME_S + 1, download_mode="proxy", **s3)
    assert make_services(signed_url_ttl_s=MAX_LIFETIME_S + 1).links.kind == "api"
    services = make_services(**s3)
    assert services.links.kind == "s3" and services.links.origins == ("http://127.0.0.1:9",)


@pytest.mark.unit
def test_load_private_key_reads_an_rsa_pem(key_file: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    assert load_private_key(key_file).private_numbers() == rsa_key.private_numbers()
