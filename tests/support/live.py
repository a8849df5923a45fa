"""The real app, built from Settings as `stemify serve` builds it, on a real uvicorn server in
a thread (no worker runs: submitted jobs stay queued), plus finished jobs with real stems."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from stemify.api import create_app
from stemify.clock import now_utc
from stemify.jobs.model import Job, JobSpec, StemFile
from stemify.jobs.store import JobStore
from stemify.keys.limits import KeyLimits
from stemify.keys.store import KeyStore, hash_key
from stemify.services import Services, build_services
from stemify.settings import Settings

MakeAudio = Callable[..., Path]


@dataclass
class Live:
    services: Services
    root: str  # http://127.0.0.1:<port>
    app: FastAPI

    @property
    def store(self) -> JobStore:
        return self.services.store

    @property
    def keys(self) -> KeyStore:
        return self.services.keys

    def client(self, key: str | None = None, **headers: str) -> httpx.Client:
        if key is not None:
            headers["X-API-Key"] = key
        return httpx.Client(base_url=f"{self.root}/api/v1", headers=headers, timeout=20)


@contextmanager
def serve_in_thread(app: FastAPI, **options: Any) -> Iterator[str]:
    """``app`` on a real uvicorn server on a free 127.0.0.1 port, in a thread; yields its root
    URL (http://127.0.0.1:<port>)."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="off",
        timeout_graceful_shutdown=2, **options,
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def live_app(settings: Settings, *, auth_required: bool = True) -> Iterator[Live]:
    services = build_services(settings)
    app = create_app(services, auth_required=auth_required)
    with serve_in_thread(app, proxy_headers=False) as root:
        yield Live(services, root, app)


def settings_for(tmp: Path, model_dir: Path, **overrides: Any) -> Settings:
    return Settings(
        **{"model_dir": model_dir, "data_dir": tmp, "default_model": "tiny", **overrides}
    )


def add_key(keys: KeyStore, name: str, limits: KeyLimits | None = None, admin: bool = False) -> str:
    secret = f"sk_test_{name}_{os.urandom(4).hex()}"
    keys.add(name, name, hash_key(secret), secret[:10], admin, now_utc(), limits)
    return secret


def finished_job(
    live: Live, make_audio: MakeAudio, owner: str | None = None, input_name: str | None = None
) -> Job:
    """A succeeded job with real wav stems, finished through the store's own worker path."""
    job_id = os.urandom(16).hex()
    stems: dict[str, StemFile] = {}
    for i, name in enumerate(("vocals", "drums")):
        audio = make_audio(f"{job_id}-{name}.wav", seconds=0.5 + i * 0.25)
        key = f"jobs/{job_id}/stems/{name}.wav"
        stems[name] = StemFile(name, key, live.services.storage.put_file(key, audio))
    now = now_utc()
    job = Job(
        id=job_id, spec=JobSpec(model="tiny"), source="upload", created_at=now, owner=owner,
        input_name=input_name,
    )  # fmt: skip
    live.store.add(job)
    assert live.store.claim(job_id, "w1", now, now) is not None
    assert live.store.succeed(
        job_id, "w1", stems=stems, quality=None, stage_seconds={}, now=now,
        expires_at=now + timedelta(hours=1),
    )  # fmt: skip
    stored = live.store.get(job_id)
    assert stored is not None
    return stored


def error_of(response: httpx.Response, status: int, code: str) -> str:
    """Assert the one error shape; return the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    return str(body["error"]["message"])
