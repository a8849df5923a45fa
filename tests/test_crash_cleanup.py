"""A writer killed mid-upload leaves a temp file behind; the maintenance loop of the next
process removes it, and no job is visible. Real `stemify serve` processes, SIGKILLed."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest
from support.processes import Cluster, client, embedded_env

pytestmark = pytest.mark.service

BOUNDARY = "stemifyboundary"


def _start_upload(port: int, file_bytes: int) -> socket.socket:
    """A multipart POST that sends ``file_bytes`` of its file part and then stalls."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    declared = len(head) + 50 * (1 << 20)  # promises far more than it sends
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        (
            f"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {declared}\r\n\r\n"
        ).encode()
        + head
    )
    chunk = b"\0" * 65536
    for _ in range(file_bytes // len(chunk)):
        sock.sendall(chunk)
    return sock


def _temp_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "storage" / ".tmp").glob("*"))


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout} s")


def test_a_killed_upload_leaves_nothing_after_the_temp_cleanup(
    tmp_path: Path, model_dir: Path
) -> None:
    data_dir = tmp_path / "data"
    fast_cleanup = {
        "STEMIFY_LOG_FORMAT": "console",
        "STEMIFY_TEMP_MAX_AGE_S": "2",
        "STEMIFY_SWEEP_INTERVAL_S": "1",
        "STEMIFY_HEARTBEAT_INTERVAL_S": "0.2",
    }
    cluster = Cluster(tmp_path, embedded_env(tmp_path, model_dir, fast_cleanup))
    try:
        first = cluster.serve()
        upload = _start_upload(cluster.port, 3 << 20)
        _wait(lambda: _temp_files(data_dir), 20, "the upload reached storage's temp area")
        first.signal(signal.SIGKILL)
        first.wait(10)
        upload.close()
        left = _temp_files(data_dir)
        assert left and all(p.suffix == ".part" for p in left)  # what the crash left behind

        cluster.serve()
        _wait(lambda: not _temp_files(data_dir), 20, "the abandoned temp file was removed")
        with client(cluster.base) as api:
            assert api.get("/jobs").json()["jobs"] == []
        assert not (data_dir / "storage" / "jobs").exists() or not any(
            (data_dir / "storage" / "jobs").rglob("*")
        )
        assert "removed 1 abandoned temp file(s)" in cluster.logs()
    finally:
        cluster.stop()
