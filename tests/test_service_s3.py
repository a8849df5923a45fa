"""Distributed on S3, no shared disk: `stemify serve` (API only) and `stemify worker` as separate
processes with data dirs of their own, over a private Redis, the machine's PostgreSQL (a
schema of its own) and SeaweedFS (the ``s3`` fixture); and the API's memory for a 300 MB
upload into S3."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.processes import Cluster, FileServer, client, redis_server, submit, wait_for
from support.uploads import peak_rss_kib, upload_wav

pytestmark = pytest.mark.service

MakeAudio = Callable[..., Path]
MiB = 1 << 20
PREFIX = "stemify/e2e"


def s3_env(tmp_path: Path, model_dir: Path, bucket: str, redis_url: str) -> dict[str, str]:
    return {
        "STEMIFY_DATA_DIR": str(tmp_path / "api-data"),
        "STEMIFY_STORAGE_URL": f"s3://{bucket}/{PREFIX}",
        "STEMIFY_MODEL_DIR": str(model_dir),
        "STEMIFY_DEFAULT_MODEL": "tiny",
        "STEMIFY_REDIS_URL": redis_url,
        "STEMIFY_REDIS_PREFIX": "s3e2e",
        "STEMIFY_SECRET_KEY": "shared-secret",
        "STEMIFY_HEARTBEAT_INTERVAL_S": "0.5",
        "STEMIFY_ALLOW_LOOPBACK_URLS": "1",
    }


@pytest.fixture
def cluster(
    tmp_path: Path, model_dir: Path, s3: Any, postgres_url: str
) -> Iterator[tuple[Cluster, Any]]:
    with redis_server() as redis_url:
        env = s3_env(tmp_path, model_dir, s3.name, redis_url)
        running = Cluster(tmp_path, {**env, "STEMIFY_DATABASE_URL": postgres_url})
        try:
            yield running, s3
        finally:
            running.stop()


def objects(s3: Any, under: str = "") -> dict[str, bytes]:
    """Every object of the bucket under ``PREFIX/under``, with its bytes."""
    found: dict[str, bytes] = {}
    pages = s3.client.get_paginator("list_objects_v2").paginate(
        Bucket=s3.name, Prefix=f"{PREFIX}/{under}"
    )
    for page in pages:
        for item in page.get("Contents", ()):
            body = s3.client.get_object(Bucket=s3.name, Key=item["Key"])["Body"]
            found[item["Key"].removeprefix(f"{PREFIX}/")] = body.read()
    return found


def download(base: str, url: str) -> bytes:
    """A stem link as the job JSON gives it (relative to the API, or absolute), redirects
    followed: the bytes, whatever the link looks like."""
    absolute = url if url.startswith(("http://", "https://")) else f"{base}{url}"
    response = httpx.get(absolute, follow_redirects=True, timeout=60)
    assert response.status_code == 200, response.text
    return response.content


def job_files(data_dir: Path) -> list[str]:
    """Files of jobs on a process's own disk: none, with S3 storage."""
    return sorted(p.name for p in data_dir.rglob("*") if p.is_file() and "jobs" in p.parts)


def test_upload_separate_download_dedup_delete_on_s3(
    cluster: tuple[Cluster, Any], make_audio: MakeAudio, tmp_path: Path
) -> None:
    running, s3 = cluster
    running.serve()
    running.start("worker", name="worker", env={"STEMIFY_DATA_DIR": str(tmp_path / "w-data")})
    api = client(running.base)
    song = make_audio("song.wav", seconds=3.0)

    first = wait_for(api, submit(api, song, shifts="0")["id"], timeout=180)
    assert first["status"] == "succeeded", running.logs()
    stored = objects(s3, f"jobs/{first['id']}/")
    stems = {f"jobs/{first['id']}/stems/{s['name']}.wav": s for s in first["stems"]}
    assert set(stored) == {f"jobs/{first['id']}/input", *stems}
    assert stored[f"jobs/{first['id']}/input"] == song.read_bytes()
    for key, stem in stems.items():
        assert len(stored[key]) == stem["size"]
        assert download(running.base, stem["url"]) == stored[key]

    # The same song again: a dedup hit, finished at submit with copies made by the server.
    again = submit(api, song, shifts="0")
    assert again["status"] == "succeeded" and again["cache_hit"] is True
    copies = objects(s3, f"jobs/{again['id']}/")
    assert {k.split("/stems/")[-1] for k in copies if "/stems/" in k} == {
        k.split("/stems/")[-1] for k in stems
    }
    for stem in again["stems"]:
        assert (
            download(running.base, stem["url"])
            == stored[f"jobs/{first['id']}/stems/{stem['name']}.wav"]
        )

    # Deleting the first job deletes its objects, and only its.
    assert api.delete(f"/jobs/{first['id']}").status_code == 204
    assert objects(s3, f"jobs/{first['id']}/") == {}
    for stem in again["stems"]:
        assert len(download(running.base, stem["url"])) == stem["size"]

    # Failures leave no object: an undecodable upload is refused at submit; a link to
    # undecodable bytes fails in the worker.
    garbage = tmp_path / "garbage.mp3"
    garbage.write_bytes(os.urandom(50_000))
    with garbage.open("rb") as file:
        refused = api.post("/jobs", files={"file": ("garbage.mp3", file)})
    assert refused.status_code == 415, refused.text
    server = FileServer(garbage)
    try:
        linked = api.post("/jobs", data={"url": server.url, "shifts": "0"})
        assert linked.status_code == 202, linked.text
        failed = wait_for(api, linked.json()["id"], timeout=120)
    finally:
        server.close()
    assert failed["status"] == "failed" and failed["error"]["code"] == "invalid_audio", failed
    assert objects(s3, f"jobs/{failed['id']}/") == {}
    assert set(objects(s3)) == set(copies)  # the dedup job's, nothing else

    # No shared disk: neither process kept a job's file on its own.
    assert job_files(tmp_path / "api-data") == []
    assert job_files(tmp_path / "w-data") == []


# ---- memory --------------------------------------------------------------------------------------


def test_a_300_mb_upload_into_s3_keeps_the_api_within_50_mb_of_idle(
    tmp_path: Path, model_dir: Path, s3: Any
) -> None:
    """The API alone (no worker): a 1 s upload first, so every code path of an upload has run
    (imports, boto3's transfer threads, ffprobe); then 300 MB. VmHWM is the peak resident size
    since the process started: if the upload had been held whole, or in more than a few
    parts, it would have grown by more than 50 MB."""
    with redis_server() as redis_url:
        running = Cluster(tmp_path, s3_env(tmp_path, model_dir, s3.name, redis_url))
        try:
            serve = running.serve()
            warm = upload_wav(running.base, 44100 * 4)
            idle = peak_rss_kib(serve.pid)
            job = upload_wav(running.base, 300 * 10**6)
            peak = peak_rss_kib(serve.pid)
            size = s3.client.head_object(Bucket=s3.name, Key=f"{PREFIX}/jobs/{job['id']}/input")
            assert size["ContentLength"] == 300 * 10**6
            assert job["input"]["duration_s"] == pytest.approx(300e6 / (44100 * 4), rel=1e-3)
            grown = (peak - idle) / 1024
            print(f"API peak RSS: idle {idle / 1024:.1f} MiB, after 300 MB {peak / 1024:.1f} MiB")
            assert grown < 50, f"the API's peak RSS grew by {grown:.1f} MiB"
            api = client(running.base)
            for done in (warm, job):
                assert api.delete(f"/jobs/{done['id']}").status_code == 204
            listed = s3.client.list_objects_v2(Bucket=s3.name, Prefix=PREFIX)
            assert listed.get("Contents", []) == []
        finally:
            running.stop()
