"""Autoscaling benchmark (``make bench``): reaction time, burst drain time against a fixed worker,
and the memory of an idle pool at MIN and at MAX.

A private redis-server and a fresh PostgreSQL schema (127.0.0.1:5432, database ``test``), the
API (`stemify serve`, distributed) and, in one run:

1. a fixed single `stemify worker`: 8 short jobs submitted at once, time until all succeeded;
2. `stemify worker --autoscale 1:2`: the same burst (other clips: no dedup hits). Reaction time
   is from the burst's submission until the second child's heartbeat row appears, which it
   writes once its model is preloaded (``STEMIFY_PRELOAD_MODELS``), i.e. ready to take a job.
   Memory is the RSS of the supervisor plus its children, idle at MIN before the burst and
   idle at MAX right after it (before the cool-down ends).

The released-size random-weight htdemucs, 4 s clips, ``shifts=0``.

    python bench/bench_autoscale.py [--pool-first]

``--pool-first`` runs the autoscaled pool before the fixed worker (on a shared machine, to see
how much of the difference is the order).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import OUT, build_models, make_clip

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
JOBS = 8
STEMIFY = str(Path(sys.executable).with_name("stemify"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def backing_services() -> Iterator[tuple[str, str]]:
    """(redis url, database url): a private redis-server and a fresh schema, removed after."""
    port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"], stdout=subprocess.DEVNULL,
    )  # fmt: skip
    schema = f"stemify_bench_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    try:
        time.sleep(0.5)
        yield f"redis://127.0.0.1:{port}/0", f"{POSTGRES}?options=-csearch_path%3D{schema}"
    finally:
        redis.terminate()
        redis.wait(10)
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def rss_mb(pid: int) -> float:
    """RSS of a process and all its descendants."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
        todo += [int(c) for c in children]
    return total


class Run:
    def __init__(self, env: dict[str, str], work: Path) -> None:
        self.env, self.work = env, work
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.api = httpx.Client(base_url=f"{self.base}/api/v1", timeout=60)
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.work / f"{name}.log").open("wb")
        process = subprocess.Popen(
            [STEMIFY, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        self.processes.append(process)
        return process

    def serve(self) -> None:
        self.start("serve", "serve", "--port", str(self.port))
        self.wait(lambda: self.api.get("/health").status_code == 200, 120, "the API")

    def workers(self) -> int:
        return len(self.api.get("/health").json()["workers"])

    def wait(self, check: Any, timeout: float, what: str) -> float:
        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            try:
                if check():
                    return time.perf_counter() - started
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        raise SystemExit(f"timed out waiting for {what}; logs in {self.work}")

    def burst(self, clips: list[Path]) -> tuple[float, list[str]]:
        """Submit every clip at once; (seconds from the first submission, job ids)."""
        started = time.perf_counter()
        ids = []
        for clip in clips:
            with clip.open("rb") as file:
                response = self.api.post("/jobs", files={"file": (clip.name, file)},
                                         data={"shifts": "0"})  # fmt: skip
            ids.append(response.json()["id"])
        return started, ids

    def drained(self, ids: list[str]) -> bool:
        states = [self.api.get(f"/jobs/{i}").json()["status"] for i in ids]
        if "failed" in states:
            raise SystemExit(f"a job failed; logs in {self.work}")
        return states == ["succeeded"] * len(ids)

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        process.send_signal(signal.SIGTERM)
        process.wait(120)

    def close(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                self.stop(process)


def phase_fixed(run: Run, clips: list[Path]) -> float:
    """Seconds for one fixed worker to drain the burst."""
    fixed = run.start("fixed", "worker")
    run.wait(lambda: run.workers() == 1, 120, "the fixed worker")
    started, ids = run.burst(clips)
    run.wait(lambda: run.drained(ids), 900, "the fixed worker's burst")
    seconds = time.perf_counter() - started
    run.stop(fixed)
    run.wait(lambda: run.workers() == 0, 60, "the fixed worker to stop")
    return seconds


def phase_pool(run: Run, clips: list[Path]) -> tuple[float, float, float, float]:
    """(drain s, reaction s, idle RSS MB at MIN, idle RSS MB at MAX) of --autoscale 1:2."""
    pool = run.start("autoscale", "worker", "--autoscale", "1:2")
    run.wait(lambda: run.workers() == 1, 120, "the first child")
    time.sleep(2)
    idle_min = rss_mb(pool.pid)
    started, ids = run.burst(clips)
    run.wait(lambda: run.workers() == 2, 120, "the second child")
    reaction_s = time.perf_counter() - started
    run.wait(lambda: run.drained(ids), 900, "the pool's burst")
    pool_s = time.perf_counter() - started
    time.sleep(2)
    idle_max = rss_mb(pool.pid)
    run.stop(pool)
    run.wait(lambda: run.workers() == 0, 60, "the pool to stop")
    return pool_s, reaction_s, idle_min, idle_max


def main() -> None:
    pool_first = "--pool-first" in sys.argv[1:]
    work = OUT / "work"
    models = work / "models"
    models.mkdir(parents=True, exist_ok=True)
    build_models(models)
    clips = [make_clip(work / f"burst{i}.wav", 4.0 + i / 20) for i in range(2 * JOBS)]
    logs = work / "autoscale"
    logs.mkdir(exist_ok=True)
    with backing_services() as (redis_url, database_url):
        env = {
            **os.environ,
            "STEMIFY_DATA_DIR": str(logs / "data"),
            "STEMIFY_STORAGE_URL": str(logs / "storage"),
            "STEMIFY_MODEL_DIR": str(models),
            "STEMIFY_DEFAULT_MODEL": "released",
            "STEMIFY_PRELOAD_MODELS": "released",
            "STEMIFY_DATABASE_URL": database_url,
            "STEMIFY_REDIS_URL": redis_url,
            "STEMIFY_SECRET_KEY": "bench",
            "STEMIFY_HEARTBEAT_INTERVAL_S": "0.5",
            "STEMIFY_AUTOSCALE_TICK_S": "0.5",
            "STEMIFY_AUTOSCALE_COOLDOWN_S": "60",
        }
        subprocess.run(["rm", "-rf", str(logs / "data"), str(logs / "storage")], check=True)
        run = Run(env, logs)
        try:
            run.serve()
            fixed_clips, pool_clips = clips[:JOBS], clips[JOBS:]
            if pool_first:
                pool = phase_pool(run, pool_clips)
                fixed_s = phase_fixed(run, fixed_clips)
            else:
                fixed_s = phase_fixed(run, fixed_clips)
                pool = phase_pool(run, pool_clips)
        finally:
            run.close()
    pool_s, reaction_s, idle_min, idle_max = pool
    results = {
        "jobs": JOBS,
        "fixed_single_worker_drain_s": round(fixed_s, 1),
        "autoscale_1_2_drain_s": round(pool_s, 1),
        "drain_ratio_autoscale_over_fixed": round(pool_s / fixed_s, 2),
        "reaction_s": round(reaction_s, 1),
        "idle_rss_mb_min_1": round(idle_min),
        "idle_rss_mb_max_2": round(idle_max),
        "cores": os.cpu_count(),
        "order": "autoscale first" if pool_first else "fixed first",
        "load_average_1m_at_end": os.getloadavg()[0],
    }
    print(json.dumps(results, indent=2))
    (OUT / "autoscale-results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
