"""The one-command embedded mode: `stemify serve` with SQLite, local storage, in-process workers.

Every test runs the real command as a child process and talks HTTP to it."""

from __future__ import annotations

import hashlib
import io
import json
import signal
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from support.processes import (
    Cluster,
    FileServer,
    Receiver,
    client,
    embedded_env,
    submit,
    wait_for,
)

from stemify.audio import decode_blocks
from stemify.egress.webhooks import verify

pytestmark = pytest.mark.service

MakeAudio = Callable[..., Path]


@pytest.fixture
def cluster(model_dir: Path, tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(
        tmp_path,
        embedded_env(
            tmp_path,
            model_dir,
            {
                "STEMIFY_WORKER_CONCURRENCY": "2",
                "STEMIFY_ALLOW_LOOPBACK_URLS": "1",
                "STEMIFY_SECRET_KEY": "test-secret",
                "STEMIFY_HEARTBEAT_INTERVAL_S": "0.5",
            },
        ),
    )
    yield running
    running.stop()


def stem_frames(api: httpx.Client, url: str, tmp_path: Path) -> int:
    response = api.get(url.removeprefix("/api/v1"))
    assert response.status_code == 200, response.text
    path = tmp_path / f"stem-{hashlib.sha1(url.encode()).hexdigest()[:8]}.wav"
    path.write_bytes(response.content)
    return sum(block.shape[1] for block in decode_blocks(path, samplerate=44100, channels=2))


def test_upload_separate_download(cluster: Cluster, make_audio: MakeAudio, tmp_path: Path) -> None:
    cluster.serve()
    song = make_audio("song.mp3", seconds=3.0)
    api = client(cluster.base)
    job = submit(api, song, shifts="0")
    assert job["status"] == "queued"
    assert job["input"]["sha256"] == hashlib.sha256(song.read_bytes()).hexdigest()
    done = wait_for(api, job["id"])
    assert done["status"] == "succeeded", done
    assert not done["cache_hit"] and done["progress"] == 100
    assert {s["name"] for s in done["stems"]} == {"drums", "bass", "other", "vocals"}
    assert set(done["stage_seconds"]) >= {"decoding", "separating", "encoding", "storing"}
    assert set(done["quality"]["stems"]) == {"drums", "bass", "other", "vocals"}
    for stem in done["stems"]:
        assert abs(stem_frames(api, stem["url"], tmp_path) - 3 * 44100) < 0.06 * 44100
    archive = zipfile.ZipFile(io.BytesIO(api.get(f"/jobs/{job['id']}/stems.zip").content))
    assert sorted(archive.namelist()) == sorted(f"{s['name']}.wav" for s in done["stems"])
    for stem in done["stems"]:
        assert archive.getinfo(f"{stem['name']}.wav").file_size == stem["size"]
    ready = api.get("/ready").json()
    assert ready["status"] == "ready" and len(ready["workers"]) == 1


def test_link_job_goes_through_yt_dlp(
    cluster: Cluster, make_audio: MakeAudio, tmp_path: Path
) -> None:
    cluster.serve()
    server = FileServer(make_audio("linked.mp3", seconds=2.0))
    try:
        api = client(cluster.base)
        response = api.post("/jobs", data={"url": server.url, "shifts": "0"})
        assert response.status_code == 202, response.text
        done = wait_for(api, response.json()["id"])
        assert done["status"] == "succeeded", done
        assert done["input"]["source"] == "url" and done["input"]["sha256"]
        assert server.requests >= 1
        assert abs(stem_frames(api, done["stems"][0]["url"], tmp_path) - 2 * 44100) < 0.1 * 44100
    finally:
        server.close()


def test_ten_concurrent_jobs(cluster: Cluster, make_audio: MakeAudio) -> None:
    cluster.serve()
    songs = [make_audio(f"song{i}.wav", seconds=1.5) for i in range(10)]
    api = client(cluster.base)
    with ThreadPoolExecutor(10) as pool:
        jobs = list(pool.map(lambda s: submit(client(cluster.base), s, shifts="0"), songs))
    assert len({j["id"] for j in jobs}) == 10
    finals = [wait_for(api, j["id"], timeout=180) for j in jobs]
    assert [f["status"] for f in finals] == ["succeeded"] * 10, finals
    assert all(f["attempts"] == 1 for f in finals)


def test_cancel_mid_job_and_delete(cluster: Cluster, make_audio: MakeAudio) -> None:
    cluster.serve()
    api = client(cluster.base)
    long_song = make_audio("long.wav", seconds=60.0)
    job = submit(api, long_song, shifts="8")
    wait_for(api, job["id"], lambda j: j["stage"] == "separating" and j["progress"] > 6)
    response = api.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 202
    done = wait_for(api, job["id"], timeout=20)
    assert done["status"] == "canceled" and done["stems"] == []
    storage = cluster.tmp / "data" / "storage" / "jobs" / job["id"]
    assert not (storage / "stems").exists() or not any((storage / "stems").iterdir())

    assert api.delete(f"/jobs/{job['id']}").status_code == 204
    assert api.get(f"/jobs/{job['id']}").status_code == 404
    assert not storage.exists()


def test_dedup_hit_runs_no_model_and_idempotency(cluster: Cluster, make_audio: MakeAudio) -> None:
    cluster.serve()
    api = client(cluster.base)
    song = make_audio("song.flac", seconds=2.0)
    first = wait_for(api, submit(api, song, shifts="0")["id"])
    assert first["status"] == "succeeded"
    second = submit(api, song, shifts="0")
    assert second["status"] == "succeeded" and second["cache_hit"] is True
    assert second["attempts"] == 0 and second["stage_seconds"] == {}  # never claimed by a worker
    assert second["quality"] == first["quality"]
    assert len(second["stems"]) == 4
    other_params = submit(api, song, shifts="0", two_stems="vocals")
    assert other_params["cache_hit"] is False

    a = api.post(
        "/jobs", files={"file": ("x.flac", song.read_bytes())}, headers={"Idempotency-Key": "k-1"}
    )
    b = api.post(
        "/jobs", files={"file": ("x.flac", song.read_bytes())}, headers={"Idempotency-Key": "k-1"}
    )
    assert a.json()["id"] == b.json()["id"]


def test_results_expire(model_dir: Path, tmp_path: Path, make_audio: MakeAudio) -> None:
    cluster = Cluster(
        tmp_path,
        embedded_env(
            tmp_path,
            model_dir,
            {
                "STEMIFY_RESULT_TTL_HOURS": str(2 / 3600),
                "STEMIFY_SWEEP_INTERVAL_S": "0.5",
                "STEMIFY_HEARTBEAT_INTERVAL_S": "0.5",
            },
        ),
    )
    try:
        cluster.serve()
        api = client(cluster.base)
        job = wait_for(api, submit(api, make_audio("song.wav", seconds=1.0), shifts="0")["id"])
        assert job["status"] == "succeeded"
        expired = wait_for(api, job["id"], lambda j: j["status"] == "expired", timeout=30)
        assert expired["stems"] == []
        assert not (tmp_path / "data" / "storage" / "jobs" / job["id"]).exists()
        assert api.get(f"/jobs/{job['id']}/stems/vocals").status_code in (404, 409, 410)
    finally:
        cluster.stop()


def test_webhook_signed_and_retried(cluster: Cluster, make_audio: MakeAudio) -> None:
    cluster.serve()
    receiver = Receiver(failures=2)
    try:
        api = client(cluster.base)
        job = submit(api, make_audio("song.wav", seconds=1.0), shifts="0", webhook_url=receiver.url)
        assert wait_for(api, job["id"])["status"] == "succeeded"
        deadline_job = wait_for(api, job["id"], lambda j: len(receiver.bodies) == 1, timeout=30)
        assert deadline_job["status"] == "succeeded"
        body, headers = receiver.bodies[0]
        assert receiver.attempts == 3
        assert verify(b"test-secret", body, headers["X-Stemify-Signature"])
        assert not verify(b"another-secret", body, headers["X-Stemify-Signature"])
        payload = json.loads(body)
        assert payload["id"] == job["id"] and payload["status"] == "succeeded"
    finally:
        receiver.close()


def test_keys_isolate_callers(model_dir: Path, tmp_path: Path, make_audio: MakeAudio) -> None:
    cluster = Cluster(
        tmp_path,
        embedded_env(
            tmp_path,
            model_dir,
            {
                "STEMIFY_AUTH": "required",
            },
        ),
    )
    try:
        key_a = cluster.cli("keys", "create", "--name", "a").stdout.strip()
        key_b = cluster.cli("keys", "create", "--name", "b").stdout.strip()
        admin = cluster.cli("keys", "create", "--name", "ops", "--admin").stdout.strip()
        assert key_a.startswith("sk_") and key_a != key_b
        cluster.serve()
        assert client(cluster.base).post("/jobs", data={"url": "http://x"}).status_code == 401
        a, b = client(cluster.base, key_a), client(cluster.base, key_b)
        job = wait_for(b, submit(b, make_audio("b.wav", seconds=1.0), shifts="0")["id"])
        assert job["status"] == "succeeded"
        for path in ("", "/events", "/stems/vocals", "/stems.zip"):
            assert a.get(f"/jobs/{job['id']}{path}").status_code == 404, path
        assert a.post(f"/jobs/{job['id']}/cancel").status_code == 404
        assert a.delete(f"/jobs/{job['id']}").status_code == 404
        assert a.get("/jobs").json()["jobs"] == []
        assert [j["id"] for j in b.get("/jobs").json()["jobs"]] == [job["id"]]
        assert client(cluster.base, admin).get(f"/jobs/{job['id']}").status_code == 200
        revoked = cluster.cli("keys", "revoke", key_b[:10])
        assert revoked.returncode == 0, revoked.stderr
        assert b.get("/jobs").status_code == 401
        listed = cluster.cli("keys", "list").stdout
        assert key_a not in listed and key_a[:10] in listed  # never the whole key
    finally:
        cluster.stop()


def test_operator_commands_and_job_timeout(
    model_dir: Path, tmp_path: Path, make_audio: MakeAudio
) -> None:
    cluster = Cluster(
        tmp_path,
        embedded_env(
            tmp_path,
            model_dir,
            {
                "STEMIFY_ALLOW_LOOPBACK_URLS": "1",
                "STEMIFY_JOB_TIMEOUT_S": "2",
                "STEMIFY_HEARTBEAT_INTERVAL_S": "0.5",
                "STEMIFY_RECONCILE_INTERVAL_S": "0.5",
                "STEMIFY_REQUEUE_AFTER_S": "0.5",
                "STEMIFY_DOWNLOAD_RETRIES": "0",
            },
        ),
    )
    try:
        serve = cluster.serve()
        assert "authentication is OFF" in serve.output()
        api = client(cluster.base)
        slow = submit(api, make_audio("long.wav", seconds=60.0), shifts="8")
        timed_out = wait_for(api, slow["id"], timeout=60)
        assert timed_out["status"] == "failed"
        assert timed_out["error"] == {
            "code": "timeout",
            "message": "the job took longer than the 0:02 limit",
        }

        gone = api.post("/jobs", data={"url": "http://127.0.0.1:9/missing.mp3"})
        failed = wait_for(api, gone.json()["id"])
        assert failed["status"] == "failed" and failed["error"]["code"] == "download_failed"

        listed = cluster.cli("jobs", "list", "--status", "failed")
        assert listed.returncode == 0, listed.stderr
        assert failed["id"] in listed.stdout and slow["id"] in listed.stdout
        retried = cluster.cli("jobs", "retry", failed["id"])
        assert "retried 1 job(s)" in retried.stdout, retried.stderr
        # The CLI's message cannot reach the server's in-process queue: the reconciler does.
        again = wait_for(
            api, failed["id"], lambda j: j["attempts"] == 2 and j["status"] == "failed"
        )
        assert again["error"]["code"] == "download_failed"
        cleaned = cluster.cli("jobs", "cleanup", "--failed")
        assert "deleted 2 failed or canceled job(s)" in cleaned.stdout, cleaned.stderr
        assert api.get(f"/jobs/{failed['id']}").status_code == 404
    finally:
        cluster.stop()


def test_sigterm_to_serve_hands_the_running_job_back(
    model_dir: Path, tmp_path: Path, make_audio: MakeAudio
) -> None:
    """uvicorn ends a SIGTERM by raising it again: the embedded workers must drain before."""
    env = embedded_env(tmp_path, model_dir, {"STEMIFY_SHUTDOWN_GRACE_S": "1"})
    cluster = Cluster(tmp_path, env)
    try:
        first = cluster.serve()
        api = client(cluster.base)
        # Long enough not to finish within the 1 s grace period (then it is handed back).
        job = submit(api, make_audio("long.wav", seconds=20.0), shifts="4")
        wait_for(api, job["id"], lambda j: j["status"] == "running" and j["progress"] > 3)
        first.signal(signal.SIGTERM)
        first.wait(60)
        assert "handed back" in first.output(), first.output()
        cluster.serve()
        assert wait_for(api, job["id"], timeout=300)["status"] == "succeeded", cluster.logs()
    finally:
        cluster.stop()
