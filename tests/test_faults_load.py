"""Load: 100 concurrent submissions to `stemify serve` with 2 `stemify worker` processes (Redis
and PostgreSQL): every job succeeds, no answer is a 5xx, each ran exactly once (from the store).
Then a bounded soak of steady submissions, polling and SSE, after which the API's and the
workers' RSS and open file descriptors are flat."""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from support.faults import leftovers, noise_files
from support.processes import Cluster, client, redis_server, submit, wait_for
from test_service_distributed import distributed_env

pytestmark = pytest.mark.faults

JOBS = 100
SOAK_S = 60.0


def usage(pid: int) -> tuple[int, int]:
    """(RSS in kB, open file descriptors) of a process."""
    rss = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def follow(base: str, job_id: str, ends: list[str]) -> None:
    with client(base).stream("GET", f"/jobs/{job_id}/events", timeout=300) as stream:
        last = ""
        for line in stream.iter_lines():
            if line.startswith("data: "):
                last = json.loads(line.removeprefix("data: "))["status"]
        ends.append(last)


def test_hundred_concurrent_submissions_then_a_soak(
    model_dir: Path, tmp_path: Path, postgres_url: str
) -> None:
    (tmp_path / "in").mkdir()
    inputs = noise_files(tmp_path / "in", JOBS + 60)
    with redis_server() as redis_url:
        env = distributed_env(tmp_path, model_dir, postgres_url, redis_url, "load")
        env["STEMIFY_HEARTBEAT_TIMEOUT_S"] = "60"  # a loaded 2-core machine: no false deaths
        cluster = Cluster(tmp_path, env)
        try:
            api_process = cluster.serve()
            workers = [cluster.start("worker", name=f"worker{i}") for i in range(2)]

            def one(path: Path) -> tuple[int, dict[str, Any]]:
                with client(cluster.base) as api, path.open("rb") as file:
                    response = api.post(
                        "/jobs", files={"file": (path.name, file)}, data={"shifts": "0"}
                    )
                return response.status_code, response.json()

            started = time.monotonic()
            with ThreadPoolExecutor(JOBS) as pool:
                answers = list(pool.map(one, inputs[:JOBS]))
            accepted_in = time.monotonic() - started
            assert [status for status, _ in answers] == [202] * JOBS, answers[:3]
            api = client(cluster.base)
            finals = [wait_for(api, body["id"], timeout=900) for _, body in answers]
            burst_s = time.monotonic() - started
            assert [f["status"] for f in finals] == ["succeeded"] * JOBS, cluster.logs()[-3000:]

            # The soak: steady submissions, each followed over SSE and polled.
            baseline = {p.pid: usage(p.pid) for p in (api_process, *workers)}
            ends: list[str] = []
            followers = []
            soaked: list[str] = []
            statuses: list[int] = []
            soak_end = time.monotonic() + SOAK_S
            for path in inputs[JOBS:]:
                if time.monotonic() > soak_end:
                    break
                job = submit(api, path, shifts="0")
                soaked.append(job["id"])
                thread = threading.Thread(target=follow, args=(cluster.base, job["id"], ends))
                thread.start()
                followers.append(thread)
                for _ in range(5):
                    statuses.append(api.get(f"/jobs/{job['id']}").status_code)
                    statuses.append(api.get("/jobs").status_code)
                    time.sleep(0.2)
            for job_id in soaked:
                assert wait_for(api, job_id, timeout=600)["status"] == "succeeded"
            for thread in followers:
                thread.join(120)
            time.sleep(2)
            after = {pid: usage(pid) for pid in baseline}
            assert set(statuses) == {200} and ends == ["succeeded"] * len(soaked), ends

            engine = sqlalchemy.create_engine(postgres_url)
            with engine.connect() as connection:
                rows = connection.execute(
                    sqlalchemy.text("SELECT status, attempts, worker_losses FROM jobs")
                ).all()
            engine.dispose()
            assert len(rows) == JOBS + len(soaked)
            assert all(row == ("succeeded", 1, 0) for row in rows), rows
            assert leftovers(tmp_path / "shared-storage") == []
            for pid, (rss, fds) in baseline.items():
                rss_after, fds_after = after[pid]
                assert fds_after <= fds + 5, (pid, fds, fds_after)
                assert rss_after <= rss * 1.25 + 20_000, (pid, rss, rss_after)
            figures = ", ".join(
                f"pid {pid}: RSS {baseline[pid][0] // 1024}->{after[pid][0] // 1024} MB, "
                f"fds {baseline[pid][1]}->{after[pid][1]}"
                for pid in baseline
            )
            print(f"{JOBS} submissions accepted in {accepted_in:.1f} s, all done in "
                  f"{burst_s:.0f} s; soak {SOAK_S:g} s: {len(soaked)} jobs, "
                  f"{len(statuses)} polls; {figures}")  # fmt: skip
        finally:
            cluster.stop()
