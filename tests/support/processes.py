"""Real processes for service tests: `stemify serve`, `stemify worker`, redis-server, receivers."""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

STEMIFY = str(Path(sys.executable).with_name("stemify"))


def ffmpeg_children() -> list[int]:
    """Our child processes named ffmpeg, running or zombie (a zombie keeps its /proc entry)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        if parent == os.getpid() and name == "ffmpeg":
            found.append(int(entry.name))
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Process:
    """A child process whose output goes to a log file, killed at the end of the test."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._file = log.open("wb")
        self.popen = subprocess.Popen(
            args, env=env, stdout=self._file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._file.close()


def embedded_env(tmp_path: Path, model_dir: Path, extra: dict[str, str]) -> dict[str, str]:
    """The environment of one embedded `stemify serve`: data in ``tmp_path/data``, the test
    models, ``tiny`` by default."""
    return {
        "STEMIFY_DATA_DIR": str(tmp_path / "data"),
        "STEMIFY_MODEL_DIR": str(model_dir),
        "STEMIFY_DEFAULT_MODEL": "tiny",
        **extra,
    }


class Cluster:
    """Environment and processes of one stemify deployment under test."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp = tmp
        self.env = {**os.environ, **env}
        self.processes: list[Process] = []
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"

    def start(self, *args: str, name: str, env: dict[str, str] | None = None) -> Process:
        """``env``: this process's own settings over the cluster's (another data dir)."""
        process = Process([STEMIFY, *args], {**self.env, **(env or {})}, self.tmp / f"{name}.log")
        self.processes.append(process)
        return process

    def serve(self) -> Process:
        process = self.start("serve", "--host", "127.0.0.1", "--port", str(self.port), name="serve")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                raise AssertionError(f"stemify serve exited:\n{process.output()}")
            try:
                if httpx.get(f"{self.base}/api/v1/health", timeout=1).status_code == 200:
                    return process
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"stemify serve did not start:\n{process.output()}")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [STEMIFY, *args], env=self.env, capture_output=True, text=True, timeout=120
        )

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def logs(self) -> str:
        return "\n".join(f"==== {p.log.name}\n{p.output()}" for p in self.processes)


def client(base: str, key: str | None = None) -> httpx.Client:
    headers = {"X-API-Key": key} if key else {}
    return httpx.Client(base_url=f"{base}/api/v1", headers=headers, timeout=30)


def submit(api: httpx.Client, path: Path, **fields: Any) -> dict[str, Any]:
    with path.open("rb") as file:
        response = api.post("/jobs", files={"file": (path.name, file)}, data=fields)
    assert response.status_code in (200, 202), response.text
    job: dict[str, Any] = response.json()
    return job


def wait_for(
    api: httpx.Client,
    job_id: str,
    until: Callable[[dict[str, Any]], bool] = lambda j: (
        j["status"] in ("succeeded", "failed", "canceled", "expired")
    ),
    timeout: float = 120,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = api.get(f"/jobs/{job_id}").json()
        if until(job):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not get there in {timeout} s: {job}")


@contextmanager
def redis_server() -> Iterator[str]:
    """A private redis-server on a free port, for tests that flush or kill Redis."""
    if shutil.which("redis-server") is None:
        raise AssertionError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if (
            subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).returncode
            == 0
        ):
            break
        time.sleep(0.05)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(10)


class FileServer:
    """Serves one file over HTTP on 127.0.0.1 (links for yt-dlp) and counts requests."""

    def __init__(self, path: Path) -> None:
        data = path.read_bytes()
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "audio/mpeg")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "audio/mpeg")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/{path.name}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Receiver:
    """A webhook receiver that fails the first ``failures`` deliveries with 500."""

    def __init__(self, failures: int = 0) -> None:
        self.bodies: list[tuple[bytes, dict[str, str]]] = []
        self.attempts = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.attempts += 1
                if outer.attempts <= failures:
                    self.send_response(500)
                    self.end_headers()
                    return
                outer.bodies.append((body, dict(self.headers)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
