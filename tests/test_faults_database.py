"""The database restarts under load: a private PostgreSQL cluster is stopped for a few seconds
while a job runs and a client keeps submitting and polling, then started again.

While it is away the API answers 503 (one error shape, Retry-After) within seconds, /ready
fails and /health does not; afterwards the same processes serve again (pooled connections
pre-pinged), the running job finishes once, and every accepted job succeeds."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy
from support.faults import leftovers, noise_files, private_postgres
from support.processes import Cluster, client, redis_server, submit, wait_for
from test_service_distributed import distributed_env

pytestmark = pytest.mark.faults

MakeAudio = Callable[..., Path]
OUTAGE_S = 6.0
ANSWER_WITHIN_S = 7.0  # the database timeout (5 s) plus slack on a loaded machine
UNAVAILABLE = {
    "error": {
        "code": "database_unavailable",
        "message": "the job database is unavailable; try again in a few seconds",
    }
}


@dataclass
class Load:
    """A client submitting a short job and polling the running one, over and over."""

    api: httpx.Client
    songs: list[Path]  # distinct: identical ones would be answered from the dedup cache
    watched: str
    accepted: list[str] = field(default_factory=list)
    answers: list[tuple[str, int, float, dict[str, Any], str | None]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def _record(self, what: str, call: Callable[[], httpx.Response]) -> httpx.Response | None:
        started = time.monotonic()
        try:
            response = call()
        except httpx.HTTPError as exc:  # a hang past the client's timeout: recorded as such
            self.answers.append((what, 0, time.monotonic() - started, {"error": str(exc)}, None))
            return None
        self.answers.append((what, response.status_code, time.monotonic() - started,
                             response.json(), response.headers.get("retry-after")))  # fmt: skip
        return response

    def run(self) -> None:
        for song in self.songs:
            if self.stop.is_set():
                return
            response = self._record("submit", functools.partial(
                self.api.post, "/jobs", files={"file": (song.name, song.read_bytes())},
                data={"shifts": "0"},
            ))  # fmt: skip
            if response is not None and response.status_code == 202:
                self.accepted.append(response.json()["id"])
            self._record("poll", lambda: self.api.get(f"/jobs/{self.watched}"))
            time.sleep(0.3)


def job_rows(url: str) -> dict[str, tuple[str, int, int]]:
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(
            sqlalchemy.text("SELECT id, status, attempts, worker_losses FROM jobs")
        ).all()
    engine.dispose()
    return {row[0]: (row[1], row[2], row[3]) for row in rows}


def test_postgres_restart_under_load(
    model_dir: Path, tmp_path: Path, make_audio: MakeAudio
) -> None:
    with private_postgres() as pg, redis_server() as redis_url:
        env = distributed_env(tmp_path, model_dir, pg.url, redis_url, "pgdown")
        env["STEMIFY_HEARTBEAT_TIMEOUT_S"] = (
            "20"  # longer than the outage: the job stays its worker's
        )
        cluster = Cluster(tmp_path, env)
        try:
            cluster.serve()
            cluster.start("worker", name="worker")
            api = client(cluster.base)
            long = submit(api, make_audio("long.wav", seconds=20.0), shifts="2")
            wait_for(api, long["id"], lambda j: j["status"] == "running", timeout=120)
            (tmp_path / "in").mkdir()
            load = Load(client(cluster.base), noise_files(tmp_path / "in", 100), long["id"])
            thread = threading.Thread(target=load.run, daemon=True)
            thread.start()
            time.sleep(2)

            assert api.get(f"/jobs/{long['id']}").json()["status"] == "running"
            pg.stop("fast")
            stopped = time.monotonic()
            outage: list[tuple[str, httpx.Response, float]] = []
            while time.monotonic() - stopped < OUTAGE_S:
                for path in ("/health", "/ready", "/jobs"):
                    started = time.monotonic()
                    outage.append((path, api.get(path), time.monotonic() - started))
                time.sleep(0.5)
            during = len(load.answers)
            pg.start()
            restarted = time.monotonic()

            # The same processes serve again without a restart.
            deadline = time.monotonic() + 30
            while api.get("/ready").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert api.get("/ready").status_code == 200, cluster.logs()
            ready_after = time.monotonic() - restarted
            time.sleep(2)
            load.stop.set()
            thread.join(60)

            for path, response, elapsed in outage:
                assert elapsed < ANSWER_WITHIN_S, (path, elapsed)
                if path == "/health":
                    assert response.status_code == 200 and response.json()["status"] == "ok"
                elif path == "/ready":
                    assert response.status_code == 503
                    assert not response.json()["checks"]["store"]["ok"]
                else:
                    assert response.status_code == 503, response.text
                    assert response.json() == UNAVAILABLE
                    assert response.headers["retry-after"] == "5"
            statuses = {status for _, status, *_ in load.answers}
            assert statuses <= {200, 202, 503}, load.answers  # never a 500, never a hang
            assert 503 in {s for _, s, *_ in load.answers[:during]}, "the outage was not seen"
            for what, status, elapsed, body, retry_after in load.answers:
                assert elapsed < ANSWER_WITHIN_S, (what, elapsed)
                if status == 503:
                    assert body == UNAVAILABLE and retry_after == "5", (what, body)
            assert load.answers[-1][1] == 200 and load.accepted, load.answers[-3:]

            done = wait_for(api, long["id"], timeout=300)
            assert done["status"] == "succeeded", cluster.logs()
            finals = [wait_for(api, job_id, timeout=300) for job_id in load.accepted]
            assert [f["status"] for f in finals] == ["succeeded"] * len(finals), cluster.logs()
            # Nothing lost, nothing run twice, nothing of a refused submission left behind.
            rows = job_rows(pg.url)
            assert set(rows) == {long["id"], *load.accepted}
            assert all(attempts == 1 and losses == 0 for _, attempts, losses in rows.values())
            stored = {p.name for p in (tmp_path / "shared-storage" / "jobs").iterdir()}
            assert stored == set(rows)
            assert leftovers(tmp_path / "shared-storage") == []
            assert "database unavailable" in cluster.logs()
            refused = sum(1 for a in load.answers if a[1] == 503)
            slowest = max(a[2] for a in load.answers)
            print(f"postgres down {OUTAGE_S:g} s; ready {ready_after:.1f} s after the restart; "
                  f"{len(load.answers)} load requests, {refused} answered 503, slowest "
                  f"{slowest:.2f} s; {len(rows)} jobs all succeeded once")  # fmt: skip
        finally:
            cluster.stop()
