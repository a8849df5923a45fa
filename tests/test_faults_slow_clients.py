"""Stalled uploads: 30 clients start an upload (headers and 1.5 MB of the file, so a partial
file exists in storage) and then send nothing. Each is cut off after
STEMIFY_UPLOAD_IDLE_TIMEOUT_S with 408 in the one error shape and its partial file removed;
meanwhile a normal client submits and polls a job to its end. A trickling upload (a few bytes
now and then, never idle for long) is cut off by the minimum rate."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from support.faults import leftovers
from support.processes import Cluster, client, embedded_env, submit, wait_for

pytestmark = pytest.mark.faults

MakeAudio = Callable[..., Path]
STALLED = 30
IDLE_S = 3.0
BOUNDARY = "stemifyfaultboundary"


def stall(base: str) -> socket.socket:
    """An upload that announces 3 MB, sends half of it and stops."""
    address = urlsplit(base)
    sock = socket.create_connection((address.hostname, address.port), timeout=30)
    preamble = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="s.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    head = (
        f"POST /api/v1/jobs HTTP/1.1\r\nHost: {address.netloc}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(preamble) + (3 << 20)}\r\n\r\n"
    ).encode()
    sock.sendall(head + preamble + b"\0" * (3 << 19))
    return sock


def answer(sock: socket.socket) -> tuple[int, dict[str, object]]:
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        more = sock.recv(65536)
        if not more:
            break
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, json.loads(body)


def test_stalled_uploads_are_cut_off_and_do_not_block_others(
    model_dir: Path, tmp_path: Path, make_audio: MakeAudio
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = embedded_env(
        tmp_path, model_dir, {"STEMIFY_UPLOAD_IDLE_TIMEOUT_S": str(IDLE_S), "TMPDIR": str(scratch)}
    )
    cluster = Cluster(tmp_path, env)
    try:
        cluster.serve()
        storage = tmp_path / "data" / "storage"
        started = time.monotonic()
        sockets = [stall(cluster.base) for _ in range(STALLED)]
        deadline = time.monotonic() + IDLE_S
        while not list((storage / ".tmp").glob("*.part")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list((storage / ".tmp").glob("*.part")), "the stalled uploads wrote nothing"
        # While they hang, a normal client is served as usual.
        api = client(cluster.base)
        job = submit(api, make_audio("song.wav", seconds=2.0), shifts="0")
        assert time.monotonic() - started < IDLE_S + 10
        done = wait_for(api, job["id"], timeout=120)
        assert done["status"] == "succeeded", cluster.logs()
        answers = [answer(sock) for sock in sockets]
        cut_after = time.monotonic() - started
        for sock in sockets:
            sock.close()
        expected = {"error": {
            "code": "upload_timeout",
            "message": f"the upload sent nothing for {IDLE_S:g} s and was stopped",
        }}  # fmt: skip
        assert answers == [(408, expected)] * STALLED
        assert [j["id"] for j in api.get("/jobs").json()["jobs"]] == [job["id"]]
        assert sorted(p.name for p in (storage / "jobs").iterdir()) == [job["id"]]
        assert leftovers(storage, scratch) == []
        print(f"{STALLED} stalled uploads cut off with 408 within {cut_after:.1f} s "
              f"(idle limit {IDLE_S:g} s); a normal job succeeded meanwhile")  # fmt: skip
    finally:
        cluster.stop()


def test_a_trickling_upload_is_cut_off_by_the_minimum_rate(model_dir: Path, tmp_path: Path) -> None:
    env = embedded_env(
        tmp_path, model_dir,
        {"STEMIFY_UPLOAD_IDLE_TIMEOUT_S": str(IDLE_S), "STEMIFY_UPLOAD_MIN_RATE_KIB_S": "4"},
    )  # fmt: skip
    cluster = Cluster(tmp_path, env)
    try:
        cluster.serve()
        sock = stall(cluster.base)  # 1.5 MB at once, then a trickle: 200 bytes every 0.5 s
        started = time.monotonic()
        sock.settimeout(0.5)
        reply = b""
        while not reply and time.monotonic() - started < 4 * IDLE_S:
            try:
                sock.sendall(b"\0" * 200)
                reply = sock.recv(1, socket.MSG_PEEK)
            except TimeoutError:
                continue
            except OSError:  # the server closed its side after answering
                break
        sock.settimeout(30)
        status, body = answer(sock)
        sock.close()
        assert status == 408, body
        error = body["error"]
        assert isinstance(error, dict) and error["code"] == "upload_timeout"
        assert "slower than the 4 KiB/s required" in str(error["message"])
        assert time.monotonic() - started < 3 * IDLE_S
        storage = tmp_path / "data" / "storage"
        assert client(cluster.base).get("/jobs").json()["jobs"] == []
        assert leftovers(storage) == []
    finally:
        cluster.stop()
