"""``stemify worker --autoscale MIN:MAX`` for real: a supervisor process and its ``stemify
worker`` children over Redis and PostgreSQL, jobs on the tiny random model, short cool-downs.
Children are SIGKILLed, made to crash at start, and the supervisor is stopped mid-burst."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.processes import Cluster, Process, client, submit, wait_for
from test_service_distributed import distributed_env, worker_of

pytestmark = pytest.mark.service

MakeAudio = Callable[..., Path]
# Short ticks, cool-down and restart backoff (STEMIFY_AUTOSCALE_*).
SHORT = [("TICK_S", "0.5"), ("COOLDOWN_S", "4"), ("MAX_STEP", "2"), ("BACKOFF_S", "0.5")]
FAST = {f"STEMIFY_AUTOSCALE_{name}": value for name, value in SHORT}


@pytest.fixture
def cluster(tmp_path: Path, model_dir: Path, postgres_url: str, redis_url: str,
            redis_prefix: str) -> Iterator[Cluster]:  # fmt: skip
    """test_service_distributed's deployment, with short autoscaler ticks and cool-down."""
    env = distributed_env(tmp_path, model_dir, postgres_url, redis_url, redis_prefix)
    running = Cluster(tmp_path, {**env, **FAST})
    yield running
    running.stop()


def alive(api: httpx.Client) -> list[dict[str, Any]]:
    workers: list[dict[str, Any]] = api.get("/health").json()["workers"]
    return workers


def wait_workers(
    api: httpx.Client, count: int, supervisor: Process, timeout: float = 90
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert supervisor.popen.poll() is None, supervisor.output()
        workers = alive(api)
        if len(workers) == count:
            return workers
        time.sleep(0.3)
    raise AssertionError(f"not {count} workers in {timeout} s: {alive(api)}\n{supervisor.output()}")


def start_pool(
    cluster: Cluster, bounds: str, name: str = "supervisor"
) -> tuple[httpx.Client, Process]:
    """The API, then a supervisor with ``--autoscale bounds`` and its first child ready."""
    if not cluster.processes:
        cluster.serve()
    api = client(cluster.base)
    supervisor = cluster.start("worker", "--autoscale", bounds, name=name)
    wait_workers(api, int(bounds.split(":")[0]), supervisor)
    return api, supervisor


def scale_events(output: str) -> list[tuple[str, int, int, str]]:
    found = re.findall(r"autoscaler: (up|down) from (\d+) to (\d+) children \((\w+);", output)
    return [(d, int(a), int(b), reason) for d, a, b, reason in found]


def test_a_burst_grows_to_max_and_shrinks_back_after_the_cool_down(
    cluster: Cluster, make_audio: MakeAudio, postgres_url: str
) -> None:
    api, supervisor = start_pool(cluster, "1:3")
    songs = [make_audio(f"song{i}.wav", seconds=3.0 + i / 10) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        jobs = list(pool.map(lambda s: submit(client(cluster.base), s, shifts="0"), songs))
    most = 0
    deadline = time.monotonic() + 240
    finals: dict[str, dict[str, Any]] = {}
    while len(finals) < len(jobs) and time.monotonic() < deadline:
        most = max(most, len(alive(api)))
        for job in jobs:
            if job["id"] not in finals:
                state = api.get(f"/jobs/{job['id']}").json()
                if state["status"] in ("succeeded", "failed", "canceled"):
                    finals[job["id"]] = state
        time.sleep(0.3)
    assert [f["status"] for f in finals.values()] == ["succeeded"] * 8, cluster.logs()
    # Exactly once: each job claimed by one worker, never handed back or re-run.
    assert all(f["attempts"] == 1 for f in finals.values()), finals
    assert most == 3, cluster.logs()
    assert len({worker_of(postgres_url, j["id"]) for j in jobs}) >= 2
    wait_workers(api, 1, supervisor, timeout=60)
    events = scale_events(supervisor.output())
    assert events[:2] == [("up", 0, 1, "below_minimum"), ("up", 1, 3, "backlog")], events
    downs = events[2:]
    assert downs and {e[0] for e in downs} == {"down"} and downs[-1][2] == 1, events
    assert {e[3] for e in downs} == {"idle"}, events
    assert "handed back" not in cluster.logs()
    assert "retiring: idle" in supervisor.output()
    # A retired child may take a moment to exit after its heartbeat row said it stopped.
    metrics = ""
    deadline = time.monotonic() + 20
    while "stemify_autoscaler_current_workers 1.0" not in metrics:
        assert time.monotonic() < deadline, metrics
        metrics = httpx.get(f"{cluster.base}/metrics", timeout=30).text
        time.sleep(0.5)
    assert "stemify_autoscaler_desired_workers 1.0" in metrics
    assert 'stemify_autoscaler_scale_events_total{direction="up",reason="backlog"}' in metrics
    assert 'stemify_autoscaler_scale_events_total{direction="down",reason="idle"}' in metrics
    # Retired children stopped cleanly: no WorkerDown alert for a scale-down.
    assert "stemify_workers_lost 0.0" in metrics
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(60) == 0, supervisor.output()
    assert alive(api) == []


def test_a_killed_child_is_replaced_and_its_job_finishes(
    cluster: Cluster, make_audio: MakeAudio, postgres_url: str
) -> None:
    api, supervisor = start_pool(cluster, "1:1")
    job = submit(api, make_audio("long.wav", seconds=20.0), shifts="4")
    wait_for(api, job["id"], lambda j: j["status"] == "running" and j["progress"] > 5, timeout=90)
    owner = worker_of(postgres_url, job["id"])
    assert owner is not None
    victim = int(owner.split("-")[-2])
    os.kill(victim, signal.SIGKILL)
    done = wait_for(api, job["id"], timeout=300)
    assert done["status"] == "succeeded", cluster.logs()
    assert done["attempts"] == 2
    # It ran under STEMIFY_AUTOSCALE_STABLE_S: replaced after the first backoff step.
    assert f"worker child {victim} exited with -9" in supervisor.output()
    assert re.search(rf"child {victim} exited with -9 .*replacement in 0.5 s", supervisor.output())
    assert len(re.findall(r"worker child (\d+) started", supervisor.output())) == 2
    assert victim not in {w["pid"] for w in alive(api)}
    # The killed child never said it stopped: counted lost (the WorkerDown alert's metric).
    metrics = httpx.get(f"{cluster.base}/metrics", timeout=30).text
    assert re.search(r"^stemify_workers_lost [1-9]", metrics, re.M), metrics


def test_a_child_crashing_at_start_is_backed_off(cluster: Cluster) -> None:
    # The children preload a model that does not exist: each dies seconds after its start.
    supervisor = cluster.start(
        "worker", "--autoscale", "1:1", name="supervisor",
        env={"STEMIFY_PRELOAD_MODELS": "nosuchmodel"},
    )  # fmt: skip
    deadline = time.monotonic() + 120
    delays: list[float] = []
    while len(delays) < 3 and time.monotonic() < deadline:
        assert supervisor.popen.poll() is None, supervisor.output()
        delays = [float(d) for d in re.findall(r"replacement in ([\d.]+) s", supervisor.output())]
        time.sleep(0.3)
    assert delays[:3] == [0.5, 1.0, 2.0], supervisor.output()
    starts = re.findall(r"worker child (\d+) started", supervisor.output())
    assert len(starts) <= 4, supervisor.output()
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(60) == 0, supervisor.output()


def test_sigterm_during_a_burst_loses_nothing(cluster: Cluster, make_audio: MakeAudio) -> None:
    cluster.env["STEMIFY_SHUTDOWN_GRACE_S"] = "1"
    api, first = start_pool(cluster, "1:2", name="first")
    jobs = [
        submit(api, make_audio(f"song{i}.wav", seconds=12.0 + i / 10), shifts="2") for i in range(4)
    ]
    wait_workers(api, 2, first)
    for job in jobs[:2]:
        wait_for(api, job["id"], lambda j: j["status"] != "queued", timeout=90)
    first.signal(signal.SIGTERM)
    assert first.wait(90) == 0, first.output()
    assert "draining 2 worker children" in first.output()
    states = [api.get(f"/jobs/{j['id']}").json()["status"] for j in jobs]
    assert set(states) <= {"queued", "succeeded"}, (states, cluster.logs())
    assert alive(api) == []
    second = cluster.start("worker", "--autoscale", "1:2", name="second")
    finals = [wait_for(api, j["id"], timeout=300) for j in jobs]
    assert [f["status"] for f in finals] == ["succeeded"] * 4, cluster.logs()
    assert second.popen.poll() is None


def test_scale_to_zero_accepts_jobs_with_no_worker(cluster: Cluster, make_audio: MakeAudio) -> None:
    cluster.serve()
    api = client(cluster.base)
    ready = api.get("/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["workers"] == {
        "ok": True,
        "detail": "no workers: jobs are accepted and wait in the queue until one starts",
    }
    job = submit(api, make_audio("song.wav", seconds=2.0), shifts="0")
    assert job["status"] == "queued"
    supervisor = cluster.start("worker", "--autoscale", "0:1", name="supervisor")
    assert wait_for(api, job["id"], timeout=120)["status"] == "succeeded", cluster.logs()
    wait_workers(api, 0, supervisor, timeout=60)
    assert scale_events(supervisor.output()) == [
        ("up", 0, 1, "backlog"),
        ("down", 1, 0, "idle"),
    ], supervisor.output()
