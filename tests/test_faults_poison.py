"""Poison job, for real: workers in a memory cgroup the job's separation exceeds are OOM-killed
by the kernel, restarted as a supervisor would; after STEMIFY_MAX_ATTEMPTS the job is
``failed/worker_lost``, nothing it left behind remains, and the next job succeeds.

The engine streams (peak RSS 466 MB at 2 s of audio, 483 MB at 120 s, tiny model), so no input
length exceeds a limit that a normal job fits in; what needs the memory here is the model: a
random-weight model of the released htdemucs size (1.2 GB peak) next to ``tiny`` (< 0.5 GB)."""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.faults import leftovers, memory_cgroup
from support.processes import Cluster, Process, client, redis_server, submit
from test_service_distributed import distributed_env

from stemify.testing.random_models import RELEASED_KWARGS, build_htdemucs, save_bag, save_model

pytestmark = pytest.mark.faults

MakeAudio = Callable[..., Path]
LIMIT_MB = 800  # a tiny-model worker peaks under 500 MB; the heavy model needs 1.2 GB
MAX_ATTEMPTS = 3
FINAL = ("succeeded", "failed", "canceled", "expired")


def heavy_model_dir(model_dir: Path, tmp_path: Path) -> Path:
    directory = tmp_path / "models"
    shutil.copytree(model_dir, directory)
    save_model(build_htdemucs(9, **RELEASED_KWARGS), directory, "bbbb0001")
    save_bag(directory, "heavy", ["bbbb0001"])
    return directory


def test_a_job_that_kills_every_worker_fails_after_max_attempts(
    model_dir: Path, tmp_path: Path, make_audio: MakeAudio, postgres_url: str
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    with redis_server() as redis_url, memory_cgroup(LIMIT_MB) as cgroup:
        env = distributed_env(
            tmp_path, heavy_model_dir(model_dir, tmp_path), postgres_url, redis_url, "poison"
        )
        env.update(STEMIFY_MAX_ATTEMPTS=str(MAX_ATTEMPTS), TMPDIR=str(scratch))
        cluster = Cluster(tmp_path, env)
        try:
            cluster.serve()
            api = client(cluster.base)
            poison = submit(api, make_audio("poison.wav", seconds=10.0), model="heavy")
            deaths: list[int] = []
            worker: Process = cgroup.start(cluster, "worker", name="worker0")
            deadline = time.monotonic() + 240
            job = poison
            while job["status"] not in FINAL and time.monotonic() < deadline:
                if worker.popen.poll() is not None:  # killed: the supervisor starts another
                    deaths.append(worker.popen.returncode)
                    worker = cgroup.start(cluster, "worker", name=f"worker{len(deaths)}")
                time.sleep(0.3)
                job = api.get(f"/jobs/{poison['id']}").json()
            elapsed = 240 - (deadline - time.monotonic())
            assert job["status"] == "failed", cluster.logs()
            assert job["error"]["code"] == "worker_lost", job
            assert job["error"]["message"] == (
                f"the worker processing this job stopped {MAX_ATTEMPTS} times; the input may "
                "need more memory than a worker has"
            )
            assert deaths == [-signal.SIGKILL] * MAX_ATTEMPTS, cluster.logs()
            assert cgroup.oom_kills() >= MAX_ATTEMPTS
            assert job["attempts"] == MAX_ATTEMPTS and job["stems"] == []
            # The worker that runs now (same memory) takes the next job and succeeds.
            normal = submit(api, make_audio("normal.wav", seconds=2.0), shifts="0")
            done = _wait(api, normal["id"], worker)
            assert done["status"] == "succeeded", cluster.logs()
            assert worker.popen.poll() is None
            # Nothing of the dead workers remains: scratch dirs, storage temp files, stems.
            assert leftovers(scratch, tmp_path / "shared-storage") == []
            assert not list((tmp_path / "shared-storage").glob(f"jobs/{poison['id']}/stems/*"))
            assert "worker_lost" in cluster.logs()
            print(f"{len(deaths)} workers OOM-killed at {LIMIT_MB} MB; failed worker_lost after "
                  f"{elapsed:.0f} s; the next job succeeded")  # fmt: skip
        finally:
            cluster.stop()


def _wait(api: object, job_id: str, worker: Process, timeout: float = 120) -> dict[str, object]:
    import httpx

    assert isinstance(api, httpx.Client)
    deadline = time.monotonic() + timeout
    job: dict[str, object] = {}
    while time.monotonic() < deadline:
        job = api.get(f"/jobs/{job_id}").json()
        if job["status"] in FINAL:
            return job
        assert worker.popen.poll() is None, "the worker died on a normal job"
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish: {job}")
