"""Redis dies mid-burst: a private redis-server is SIGKILLed while a job runs, an SSE client
follows it and a burst of submissions is under way, then restarted empty. Running jobs finish,
submissions during the outage are stored and sent by the reconciler once Redis is back, the
SSE stream keeps going to the job's end; nothing is lost or run twice."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy
from support.faults import leftovers, noise_files, private_redis
from support.processes import Cluster, client, submit, wait_for
from test_service_distributed import distributed_env

pytestmark = pytest.mark.faults

MakeAudio = Callable[..., Path]
OUTAGE_S = 4.0


def follow(api: httpx.Client, job_id: str, events: list[dict[str, Any]]) -> None:
    with api.stream("GET", f"/jobs/{job_id}/events", timeout=300) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))


def test_redis_killed_and_restarted_empty_mid_burst(
    model_dir: Path, tmp_path: Path, make_audio: MakeAudio, postgres_url: str
) -> None:
    with private_redis() as redis:
        env = distributed_env(tmp_path, model_dir, postgres_url, redis.url, "redisdown")
        env["STEMIFY_HEARTBEAT_TIMEOUT_S"] = "20"
        cluster = Cluster(tmp_path, env)
        try:
            cluster.serve()
            for i in range(2):
                cluster.start("worker", name=f"worker{i}")
            api = client(cluster.base)
            long = submit(api, make_audio("long.wav", seconds=20.0), shifts="2")
            wait_for(api, long["id"], lambda j: j["status"] == "running", timeout=120)
            events: list[dict[str, Any]] = []
            sse = threading.Thread(target=follow, args=(client(cluster.base), long["id"], events))
            sse.start()
            # Distinct files: identical ones would be answered from the dedup cache.
            (tmp_path / "in").mkdir()
            songs = iter(noise_files(tmp_path / "in", 40))
            before = [submit(api, next(songs), shifts="0") for _ in range(6)]
            assert redis.dbsize() > 0
            assert api.get(f"/jobs/{long['id']}").json()["status"] == "running"

            redis.kill()
            killed = time.monotonic()
            during = []
            while time.monotonic() - killed < OUTAGE_S:
                during.append(submit(api, next(songs), shifts="0"))  # 202: stored, sent later
                assert api.get(f"/jobs/{long['id']}").status_code == 200
                time.sleep(0.5)
            assert api.get("/ready").status_code == 503
            assert api.get("/health").status_code == 200
            redis.start()  # empty: every message it held is gone
            restarted = time.monotonic()
            after = [submit(api, next(songs), shifts="0") for _ in range(3)]

            jobs = [long, *before, *during, *after]
            finals = [wait_for(api, j["id"], timeout=300) for j in jobs]
            assert [f["status"] for f in finals] == ["succeeded"] * len(jobs), cluster.logs()
            recovered = time.monotonic() - restarted
            sse.join(120)
            assert not sse.is_alive() and events[-1]["status"] == "succeeded", events[-3:]
            assert "reconciler re-enqueued" in cluster.logs()
            assert "stays queued unsent" in cluster.logs()  # the outage's submissions
            print(f"redis down {OUTAGE_S:g} s; {len(jobs)} jobs ({len(during)} submitted while "
                  f"down) all succeeded {recovered:.0f} s after the restart; "
                  f"{len(events)} SSE events")  # fmt: skip
            engine = sqlalchemy.create_engine(postgres_url)
            with engine.connect() as connection:
                rows = connection.execute(
                    sqlalchemy.text("SELECT id, attempts, worker_losses FROM jobs")
                ).all()
            engine.dispose()
            assert {row[0] for row in rows} == {j["id"] for j in jobs}
            assert all(row[1] == 1 and row[2] == 0 for row in rows), rows
            assert leftovers(tmp_path / "shared-storage") == []
        finally:
            cluster.stop()
