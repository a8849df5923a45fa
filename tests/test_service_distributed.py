"""Scaled-out mode: `stemify serve` (API only) + `stemify worker` processes over Redis and
PostgreSQL. Workers are killed and Redis is flushed for real."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy
from support.processes import STEMIFY, Cluster, Process, client, redis_server, submit, wait_for

pytestmark = pytest.mark.service

MakeAudio = Callable[..., Path]


def distributed_env(
    tmp_path: Path, model_dir: Path, database_url: str, redis_url: str, prefix: str
) -> dict[str, str]:
    return {
        "STEMIFY_DATA_DIR": str(tmp_path / "data"),
        "STEMIFY_STORAGE_URL": str(tmp_path / "shared-storage"),
        "STEMIFY_MODEL_DIR": str(model_dir),
        "STEMIFY_DEFAULT_MODEL": "tiny",
        "STEMIFY_DATABASE_URL": database_url,
        "STEMIFY_REDIS_URL": redis_url,
        "STEMIFY_REDIS_PREFIX": prefix,
        "STEMIFY_SECRET_KEY": "shared-secret",
        "STEMIFY_HEARTBEAT_INTERVAL_S": "0.5",
        "STEMIFY_HEARTBEAT_TIMEOUT_S": "3",
        "STEMIFY_RECONCILE_INTERVAL_S": "1",
        "STEMIFY_REQUEUE_AFTER_S": "2",
    }


@pytest.fixture
def cluster(
    tmp_path: Path, model_dir: Path, postgres_url: str, redis_url: str, redis_prefix: str
) -> Iterator[Cluster]:
    running = Cluster(
        tmp_path, distributed_env(tmp_path, model_dir, postgres_url, redis_url, redis_prefix)
    )
    yield running
    running.stop()


def worker_of(database_url: str, job_id: str) -> str | None:
    engine = sqlalchemy.create_engine(database_url)
    with engine.connect() as connection:
        value = connection.execute(
            sqlalchemy.text("SELECT worker_id FROM jobs WHERE id = :id"), {"id": job_id}
        ).scalar()
    engine.dispose()
    return str(value) if value else None


def test_ten_jobs_over_two_workers(
    cluster: Cluster, make_audio: MakeAudio, postgres_url: str
) -> None:
    cluster.serve()
    workers = [cluster.start("worker", name=f"worker{i}") for i in range(2)]
    songs = [make_audio(f"song{i}.wav", seconds=1.5) for i in range(10)]
    with ThreadPoolExecutor(10) as pool:
        jobs = list(pool.map(lambda s: submit(client(cluster.base), s, shifts="0"), songs))
    api = client(cluster.base)
    finals = [wait_for(api, j["id"], timeout=180) for j in jobs]
    assert [f["status"] for f in finals] == ["succeeded"] * 10, cluster.logs()
    assert all(f["attempts"] == 1 for f in finals)
    used = {worker_of(postgres_url, j["id"]) for j in jobs}
    assert len(used) == 2, "both workers should have taken jobs"
    ready = api.get("/ready").json()
    assert ready["status"] == "ready" and len(ready["workers"]) == 2
    for worker in workers:
        assert worker.popen.poll() is None


def test_killed_worker_job_is_finished_by_another(
    cluster: Cluster, make_audio: MakeAudio, postgres_url: str
) -> None:
    cluster.serve()
    first = cluster.start("worker", name="first")
    api = client(cluster.base)
    job = submit(api, make_audio("long.wav", seconds=20.0), shifts="4")
    wait_for(api, job["id"], lambda j: j["status"] == "running" and j["progress"] > 5, timeout=60)
    first.signal(signal.SIGKILL)
    first.wait(10)
    second = cluster.start("worker", name="second")
    done = wait_for(api, job["id"], timeout=300)
    assert done["status"] == "succeeded", cluster.logs()
    assert done["attempts"] == 2
    assert second.popen.poll() is None
    owner = worker_of(postgres_url, job["id"])
    assert owner is not None and f"-{first.pid}-" not in owner


def test_sigterm_hands_the_job_back(
    model_dir: Path, tmp_path: Path, make_audio: MakeAudio, postgres_url: str, redis_url: str,
    redis_prefix: str,
) -> None:  # fmt: skip
    env = distributed_env(tmp_path, model_dir, postgres_url, redis_url, redis_prefix)
    env["STEMIFY_SHUTDOWN_GRACE_S"] = "1"
    cluster = Cluster(tmp_path, env)
    try:
        cluster.serve()
        first = cluster.start("worker", name="first")
        api = client(cluster.base)
        job = submit(api, make_audio("long.wav", seconds=20.0), shifts="4")
        wait_for(api, job["id"], lambda j: j["status"] == "running" and j["progress"] > 3)
        first.signal(signal.SIGTERM)
        assert first.wait(60) == 0, first.output()
        assert "handed back" in first.output()
        # Another process's change: the API shows it within STEMIFY_JOB_CACHE_S.
        queued = wait_for(api, job["id"], lambda j: j["status"] == "queued", timeout=5)
        assert queued["status"] == "queued"
        cluster.start("worker", name="second")
        assert wait_for(api, job["id"], timeout=300)["status"] == "succeeded", cluster.logs()
    finally:
        cluster.stop()


def test_redis_flushed_while_jobs_wait(
    model_dir: Path, tmp_path: Path, make_audio: MakeAudio, postgres_url: str
) -> None:
    with redis_server() as url:
        cluster = Cluster(
            tmp_path, distributed_env(tmp_path, model_dir, postgres_url, url, "flush")
        )
        try:
            cluster.serve()
            api = client(cluster.base)
            jobs = [
                submit(api, make_audio(f"song{i}.wav", seconds=1.5), shifts="0") for i in range(4)
            ]
            port = url.rsplit(":", 1)[1].split("/")[0]
            keys = subprocess.run(
                ["redis-cli", "-p", port, "dbsize"], capture_output=True, text=True, check=True
            )
            assert int(keys.stdout) > 0, "the jobs' messages should be in Redis"
            subprocess.run(["redis-cli", "-p", port, "flushall"], check=True, capture_output=True)
            time.sleep(0.2)
            cluster.start("worker", name="worker")
            finals = [wait_for(api, j["id"], timeout=120) for j in jobs]
            assert [f["status"] for f in finals] == ["succeeded"] * 4, cluster.logs()
            assert "reconciler re-enqueued" in cluster.logs()
        finally:
            cluster.stop()


def test_events_cross_processes(cluster: Cluster, make_audio: MakeAudio) -> None:
    """Progress published by a worker process reaches an SSE client of the API process."""
    cluster.serve()
    cluster.start("worker", name="worker")
    api = client(cluster.base)
    job = submit(api, make_audio("song.wav", seconds=8.0), shifts="2")
    events = []
    with api.stream("GET", f"/jobs/{job['id']}/events", timeout=120) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    stages = [e["stage"] for e in events if e["status"] == "running"]
    assert "separating" in stages, events
    progress = [e["progress"] for e in events if e["status"] == "running"]
    assert progress == sorted(progress)
    assert events[-1]["status"] == "succeeded"


# A worker without a job's model refuses it: the job stays queued, unclaimed (no attempt
# counted), until a worker that has the model takes it; /health says which worker lacks it.


def worker_with(cluster: Cluster, model_dir: Path, name: str) -> Process:
    env = {**cluster.env, "STEMIFY_MODEL_DIR": str(model_dir)}
    process = Process([STEMIFY, "worker"], env, cluster.tmp / name)
    cluster.processes.append(process)
    return process


def test_a_worker_without_the_model_leaves_the_job_for_one_that_has_it(
    cluster: Cluster, make_audio: MakeAudio, model_dir: Path, tmp_path: Path
) -> None:
    cluster.serve()  # the API's model directory has the models: it accepts the job
    empty = tmp_path / "no-models"
    empty.mkdir()
    worker_with(cluster, empty, "bare.log")
    api = client(cluster.base)
    deadline = time.monotonic() + 60
    while not api.get("/health").json()["workers"] and time.monotonic() < deadline:
        time.sleep(0.2)
    job = submit(api, make_audio("song.wav", seconds=1.0), shifts="0")

    # Several refusals later (one every few seconds) the job is still queued and untried.
    time.sleep(8)
    still = api.get(f"/jobs/{job['id']}").json()
    assert still["status"] == "queued" and still["attempts"] == 0, (still, cluster.logs())
    assert "does not have: handed back to the queue" in cluster.logs()
    [bare] = api.get("/health").json()["workers"]
    assert bare["models"] == [] and bare["lacks_default_model"] is True, bare

    worker_with(cluster, model_dir, "equipped.log")
    done = wait_for(api, job["id"], timeout=120)
    assert done["status"] == "succeeded" and done["attempts"] == 1, (done, cluster.logs())
    workers = api.get("/health").json()["workers"]
    assert sorted(w["lacks_default_model"] for w in workers) == [False, True]
    equipped = next(w for w in workers if not w["lacks_default_model"])
    assert "tiny" in equipped["models"]
