"""S3 faults on a SeaweedFS of this module's own (ports, data dir), stopped (killed: connections
refused), started again on the same ports and data, or paused (SIGSTOP: connections accepted,
never answered): at submit, mid-job, an upload cut off mid-stream, /ready and /health."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.live import serve_in_thread
from support.s3 import BOTO3_CLEARED, Weed, boto3_env, seaweedfs

from stemify.api import create_app
from stemify.clock import now_utc
from stemify.jobs.layout import input_key
from stemify.jobs.model import Job, JobSpec, JobStatus
from stemify.services import Services, build_services
from stemify.settings import Settings
from stemify.worker.maintenance import sweep
from stemify.worker.runner import JobRunner

# A private S3 server, killed and restarted by the tests, and a real uvicorn or a real job.
pytestmark = pytest.mark.service

MakeAudio = Callable[..., Path]
MiB = 1 << 20


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Weed]:
    with seaweedfs(tmp_path_factory.mktemp("faulty-seaweedfs")) as server:
        yield server


@pytest.fixture
def bucket(weed: Weed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the running server, boto3's variables pointing at it."""
    if weed.process is None or weed.process.poll() is not None:
        weed.start()  # a test before this one killed it and failed before restarting it
    weed.resume()
    for name in BOTO3_CLEARED:
        monkeypatch.delenv(name, raising=False)
    for name, value in boto3_env(weed, tmp_path).items():
        monkeypatch.setenv(name, value)
    name = f"faults-{uuid.uuid4().hex[:12]}"
    weed.admin.create_bucket(Bucket=name)
    return name


@pytest.fixture
def make_services(
    tmp_path: Path, model_dir: Path, bucket: str
) -> Iterator[Callable[..., Services]]:
    with ExitStack() as stack:

        def make(**overrides: Any) -> Services:
            settings = Settings(
                **{
                    "model_dir": model_dir,
                    "data_dir": tmp_path / "data",
                    "default_model": "tiny",
                    "secret_key": "test-secret",
                    "storage_url": f"s3://{bucket}/stemify",
                    **overrides,
                }
            )
            services = build_services(settings)
            stack.callback(services.close)
            return services

        yield make


@pytest.fixture
def api(make_services: Callable[..., Services]) -> Iterator[tuple[Services, httpx.Client]]:
    services = make_services(s3_connect_timeout_s=1, s3_read_timeout_s=2)
    with (
        serve_in_thread(create_app(services, auth_required=False)) as root,
        httpx.Client(base_url=f"{root}/api/v1", timeout=60) as client,
    ):
        yield services, client


def objects(weed: Weed, bucket: str) -> list[str]:
    answer = weed.admin.list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in answer.get("Contents", ()))


def uploads(weed: Weed, bucket: str) -> list[str]:
    answer = weed.admin.list_multipart_uploads(Bucket=bucket)
    return [u["Key"] for u in answer.get("Uploads", ())]


def probe_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("stemify-probe-*")}


def data_files(services: Services) -> set[str]:
    """What the API keeps on its own disk (database, key: never a job's file with S3)."""
    root = services.settings.data_dir
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def assert_storage_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json() == {
        "error": {
            "code": "storage_error",
            "message": "storage unavailable: job files cannot be stored or read right now; "
            "try again later",
        }
    }
    assert response.headers["Retry-After"] == "30"


def submit(client: httpx.Client, song: Path) -> httpx.Response:
    with song.open("rb") as file:
        return client.post("/jobs", files={"file": (song.name, file)})


@pytest.mark.parametrize("fault", ["stopped", "paused"])
def test_submit_with_s3_unreachable_is_503_and_stores_nothing(
    weed: Weed, bucket: str, api: tuple[Services, httpx.Client], make_audio: MakeAudio, fault: str
) -> None:
    """Stopped: connections refused. Paused: connections hang, and the 1 s connect / 2 s read
    timeouts (STEMIFY_S3_*_TIMEOUT_S) with boto3's 2 attempts answer in seconds."""
    services, client = api
    song = make_audio("song.wav", seconds=2.0)
    before, files = probe_dirs(), data_files(services)
    weed.stop() if fault == "stopped" else weed.pause()
    try:
        assert_storage_unavailable(submit(client, song))
        jobs, _ = services.store.list_jobs(owner=None, all_owners=True)
        assert jobs == []
        assert probe_dirs() == before
        assert data_files(services) == files
    finally:
        weed.start() if fault == "stopped" else weed.resume()
    if fault == "stopped":
        # Nothing reached the server. (A paused server may still complete the PutObject it
        # had received when it wakes up: the bucket's lifecycle rule is the backstop there;
        # docs/operations/runbook.md.)
        assert objects(weed, bucket) == []
    assert uploads(weed, bucket) == []
    ok = submit(client, song)  # and it works again once S3 is back
    assert ok.status_code == 202, ok.text


def test_ready_reports_storage_and_health_does_not(
    weed: Weed, bucket: str, api: tuple[Services, httpx.Client]
) -> None:
    _, client = api
    ready = client.get("/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["storage"] == {
        "ok": True,
        "detail": f"bucket s3://{bucket} reachable",
    }
    weed.stop()
    try:
        ready = client.get("/ready")
        assert ready.status_code == 503
        storage = ready.json()["checks"]["storage"]
        assert storage["ok"] is False
        assert storage["detail"].startswith(f"cannot access bucket s3://{bucket}: ")
        assert "Could not connect" in storage["detail"]
        assert weed.secret_key not in ready.text
        assert ready.json()["checks"]["store"]["ok"] is True
        health = client.get("/health")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
    finally:
        weed.start()
    assert client.get("/ready").status_code == 200


def test_an_upload_cut_off_mid_stream_leaves_no_multipart_upload(
    weed: Weed, bucket: str, api: tuple[Services, httpx.Client]
) -> None:
    """20 MiB of a 100 MiB upload sent (two parts under way), then the client goes away: the
    multipart upload is aborted, no object and no job remain."""
    services, client = api
    host, port = str(client.base_url.host), int(client.base_url.port or 80)
    boundary = "cutoff"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    length = len(head) + 100 * MiB
    with socket.create_connection((host, port)) as sock:
        sock.sendall(
            (
                f"POST /api/v1/jobs HTTP/1.1\r\nHost: {host}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {length}\r\n\r\n"
            ).encode()
            + head
        )
        piece = b"\x01" * MiB
        for _ in range(20):
            sock.sendall(piece)
        deadline = time.monotonic() + 30
        while not uploads(weed, bucket) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert uploads(weed, bucket), "the upload should be streaming into a multipart upload"
    deadline = time.monotonic() + 30
    while uploads(weed, bucket) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert uploads(weed, bucket) == []
    assert objects(weed, bucket) == []
    jobs, _ = services.store.list_jobs(owner=None, all_owners=True)
    assert jobs == []


def test_s3_failing_mid_job_fails_it_and_the_sweeper_removes_the_partial_stems(
    weed: Weed,
    bucket: str,
    make_services: Callable[..., Services],
    make_audio: MakeAudio,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """S3 goes away once the first stem is stored: the job fails with storage_error (the
    runner does not retry: `stemify jobs retry` or the client does); the runner cannot delete
    the stem it stored (S3 is down), so it stays until the sweeper, one result TTL after the
    failure, deletes the job's objects (its input too) and marks it expired."""
    services = make_services(heartbeat_interval_s=0.2, result_ttl_hours=1.0)
    song = make_audio("song.wav", seconds=3.0)
    job_id = uuid.uuid4().hex
    size = services.storage.put_file(input_key(job_id), song)
    services.store.add(
        Job(
            id=job_id,
            spec=JobSpec(model="tiny", shifts=0),
            source="upload",
            created_at=now_utc(),
            input_key=input_key(job_id),
            input_size=size,
            input_duration_s=3.0,
            input_format="wav",
        )
    )
    # The fault, at the moment it matters: right after the first stem is stored.
    storage = services.storage
    put_file = storage.put_file
    stored: list[str] = []

    def put_then_fail(key: str, source: Path, *, move: bool = False) -> int:
        written = put_file(key, source, move=move)
        stored.append(key)
        if len(stored) == 1:
            weed.stop()
        return written

    storage.put_file = put_then_fail  # type: ignore[method-assign]
    try:
        JobRunner(services, "w1", threading.Event()).run(job_id)
        failed = services.store.get(job_id)
        assert failed is not None and failed.status == JobStatus.FAILED
        assert failed.error_code == "storage_error"
        assert failed.error_message == "storage unavailable while the job ran; it can be retried"
        assert "Could not connect" in caplog.text  # the cause, for the operator
        assert weed.secret_key not in caplog.text
        assert failed.stems == {}
        assert "left for the sweeper" in caplog.text
    finally:
        weed.start()
    prefix = f"stemify/jobs/{job_id}/"
    assert objects(weed, bucket) == [f"{prefix}input", f"stemify/{stored[0]}"]
    assert sweep(services, now_utc()) == []  # not yet: a failed job is kept a result TTL
    assert sweep(services, now_utc() + timedelta(hours=1, minutes=1)) == [job_id]
    assert objects(weed, bucket) == []
    assert uploads(weed, bucket) == []
    expired = services.store.get(job_id)
    assert expired is not None and expired.status == JobStatus.EXPIRED
