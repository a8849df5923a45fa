"""What the fault tests break, as private instances: a memory cgroup for workers the kernel
kills, a throwaway PostgreSQL cluster to stop and start, and checks that nothing leaked."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import time
import uuid
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from support.processes import Cluster, Process, free_port


def noise_files(directory: Path, count: int, seconds: float = 1.0) -> list[Path]:
    """Distinct noise files (identical ones would be answered from the dedup cache)."""
    rng = np.random.default_rng(15)
    paths = []
    for i in range(count):
        samples = (rng.standard_normal((int(44100 * seconds), 2)) * 3000).astype("<i2")
        path = directory / f"noise{i}.wav"
        with wave.open(str(path), "wb") as out:
            out.setnchannels(2)
            out.setsampwidth(2)
            out.setframerate(44100)
            out.writeframes(samples.tobytes())
        paths.append(path)
    return paths


@dataclass
class MemoryCgroup:
    """A cgroup (v1 memory controller) of its own: processes started in it are OOM-killed by
    the kernel when together they use more than ``limit_bytes``."""

    path: Path
    limit_bytes: int

    def start(self, cluster: Cluster, *args: str, name: str) -> Process:
        """``stemify ARGS`` inside the cgroup from its first instruction (a shell joins it and
        execs stemify, so nothing is charged elsewhere first)."""
        from support.processes import STEMIFY

        script = f'echo $$ > {self.path}/cgroup.procs && exec "$@"'
        process = Process(
            ["sh", "-c", script, "sh", STEMIFY, *args], cluster.env, cluster.tmp / f"{name}.log"
        )
        cluster.processes.append(process)
        return process

    def oom_kills(self) -> int:
        for line in (self.path / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return int((self.path / "memory.failcnt").read_text())


def _own_memory_cgroup() -> Path:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, relative = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / relative.lstrip("/")
    unified = Path("/sys/fs/cgroup/cgroup.controllers")
    raise AssertionError(
        "no cgroup v1 memory controller here"
        + (" (cgroup v2: not supported by this helper)" if unified.exists() else "")
    )


@contextlib.contextmanager
def memory_cgroup(limit_mb: int) -> Iterator[MemoryCgroup]:
    """A child of this process's memory cgroup with a limit; removed at the end (its processes
    must have been stopped by then)."""
    path = _own_memory_cgroup() / f"stemify-test-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        (path / "memory.limit_in_bytes").write_text(str(limit_mb << 20))
        yield MemoryCgroup(path, limit_mb << 20)
    finally:
        for pid in (path / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                path.rmdir()
                break
            except OSError:  # the killed processes are still leaving
                time.sleep(0.1)


def leftovers(*roots: Path) -> list[str]:
    """Temp and partial files under ``roots``: storage's .tmp writes, scratch dirs of jobs."""
    found = []
    for root in roots:
        for pattern in ("**/.tmp/*", "**/stemify-job-*", "**/*.partial"):
            found += glob.glob(str(root / pattern), recursive=True)
    return sorted(found)


# ---- a private PostgreSQL cluster -------------------------------------------------------------


def _pg_bin(tool: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    if not found:
        raise AssertionError(f"{tool} not found under /usr/lib/postgresql/*/bin")
    return found[-1]


class PrivatePostgres:
    """A throwaway cluster (initdb in a temp dir, trust auth, its own port) to stop and start.

    PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` user."""

    def __init__(self, root: Path) -> None:
        self.data = root / "pgdata"
        self.log = root / "postgres.log"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(root, "postgres")
        subprocess.run(
            [*self._as, _pg_bin("initdb"), "-D", str(self.data), "-U", "postgres",
             "--auth=trust", "--no-sync", "-E", "UTF8"],
            check=True, capture_output=True,
        )  # fmt: skip
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                "unix_socket_directories = ''\nfsync = off\nmax_connections = 200\n"
            )

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self._as, _pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
             "-t", "60", *args],
            check=True, capture_output=True,
        )  # fmt: skip

    def start(self) -> None:
        self._ctl("start")

    def stop(self, mode: str = "fast") -> None:
        """``fast``: clients are disconnected, as when the database restarts; ``immediate``:
        as if it crashed."""
        self._ctl("stop", "-m", mode)

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started cluster, removed at the end. Its directory is not under pytest's tmp_path,
    which only root may enter."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="stemify-pg-"))
    try:
        server = PrivatePostgres(root)
        server.start()
        try:
            yield server
        finally:
            if server.running():
                with contextlib.suppress(subprocess.CalledProcessError):
                    server.stop("immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---- a private Redis that can be killed and restarted empty -----------------------------------


class PrivateRedis:
    """``redis-server`` on a port of its own, without persistence: a restart comes back empty."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ping = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True)
            if ping.returncode == 0 and b"PONG" in ping.stdout:
                return
            time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def dbsize(self) -> int:
        out = subprocess.run(["redis-cli", "-p", str(self.port), "dbsize"], capture_output=True,
                             text=True, check=True)  # fmt: skip
        return int(out.stdout)


@contextlib.contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.kill()


# ---- a small filesystem of the test's own -------------------------------------------------------


@contextlib.contextmanager
def small_filesystem(path: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of ``size_mb`` mounted at ``path`` (needs root), unmounted at the end."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
        capture_output=True, text=True,
    )  # fmt: skip
    if mounted.returncode != 0:
        raise AssertionError(f"cannot mount a tmpfs (root needed): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path, leave_mb: float) -> Path:
    """A filler file taking all but ``leave_mb`` of the filesystem holding ``path``."""
    stat = os.statvfs(path)
    free = stat.f_bavail * stat.f_frsize
    filler = path / "filler"
    with filler.open("wb") as out:
        out.truncate(0)
        remaining = free - int(leave_mb * (1 << 20))
        block = b"\0" * (1 << 20)
        while remaining > 0:  # written, not sparse: tmpfs counts pages written
            out.write(block[: min(len(block), remaining)])
            remaining -= len(block)
    return filler
