"""Redis with a password and over TLS (a real redis-server with --requirepass and
--tls-port, a self-signed certificate from openssl), and secrets kept out of every log line,
error message and `stemify config show` through a whole distributed job."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from click.testing import CliRunner
from support.processes import Cluster, client, free_port, submit, wait_for
from test_service_distributed import distributed_env

from stemify.api.rate_limits import RateLimiter
from stemify.cli.main import cli as stemify_cli
from stemify.errors import ConfigurationError
from stemify.queue.transport import RedisQueue, make_broker
from stemify.services import check_redis_url

pytestmark = pytest.mark.service

MakeAudio = Callable[..., Path]
REDIS_PASSWORD = "redis-pass-5c1e7a"
DB_PASSWORD = "db-pass-93b2f4"
SECRET_KEY = "secret-key-0d4e9b7c1a"
DSN_KEY = "publickey"
DSN = f"https://{DSN_KEY}@127.0.0.1:9/1"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate for 127.0.0.1 (also its own CA)."""
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem"),
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return folder


@contextmanager
def protected_redis(password: str, tls: Path | None = None) -> Iterator[str]:
    """A private redis-server that wants ``password``; with ``tls``, only over TLS."""
    assert shutil.which("redis-server"), "redis-server is not installed"
    port = free_port()
    args = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--requirepass", password]  # fmt: skip
    if tls is None:
        args += ["--port", str(port)]
        url = f"redis://:{password}@127.0.0.1:{port}/0"
    else:
        args += ["--port", "0", "--tls-port", str(port), "--tls-auth-clients", "no",
                 "--tls-cert-file", str(tls / "cert.pem"), "--tls-key-file", str(tls / "key.pem"),
                 "--tls-ca-cert-file", str(tls / "cert.pem")]  # fmt: skip
        url = f"rediss://:{password}@127.0.0.1:{port}/0?ssl_ca_certs={tls / 'cert.pem'}"
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.RedisError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.parametrize("tls", [False, True], ids=["password", "tls+password"])
def test_every_redis_user_works_with_password_and_tls(tls: bool, certificate: Path) -> None:
    with protected_redis(REDIS_PASSWORD, certificate if tls else None) as url:
        assert url.startswith("rediss://" if tls else "redis://")
        check_redis_url(url, allow_insecure=False)
        queue = RedisQueue(make_broker(url, namespace="stemify-test-dramatiq"))
        queue.ping()
        queue.close()
        limiter = RateLimiter(url, "stemify-test")
        assert limiter.hit("read", "key:a", 1) is None
        assert limiter.hit("read", "key:a", 1) is not None
        wrong = url.replace(REDIS_PASSWORD, "wrong")
        with pytest.raises(redis.AuthenticationError) as refused:
            redis.Redis.from_url(wrong).ping()
        assert "wrong" not in str(refused.value) and REDIS_PASSWORD not in str(refused.value)
        if tls:  # the TLS port does not speak plain Redis
            plain = url.replace("rediss://", "redis://").split("?")[0]
            with pytest.raises(redis.ConnectionError):
                redis.Redis.from_url(plain, socket_timeout=2).ping()


def test_a_passwordless_remote_redis_is_refused_without_echoing_urls() -> None:
    with pytest.raises(ConfigurationError, match="without a password"):
        check_redis_url("redis://10.0.0.5:6379/0", allow_insecure=False)
    check_redis_url(f"rediss://:{REDIS_PASSWORD}@10.0.0.5:6380/0", allow_insecure=False)


def test_no_secret_in_logs_errors_or_config_show(
    tmp_path: Path,
    model_dir: Path,
    postgres_url: str,
    certificate: Path,
    make_audio: MakeAudio,
    s3: Any,
) -> None:
    """With S3 storage (boto3's credentials in the environment, as deployed) and DEBUG logs."""
    database_url = postgres_url.replace("postgres@", f"postgres:{DB_PASSWORD}@", 1)
    with protected_redis(REDIS_PASSWORD, certificate) as redis_url:
        env = {
            **distributed_env(tmp_path, model_dir, database_url, redis_url, "secrets"),
            "STEMIFY_SECRET_KEY": SECRET_KEY,
            "STEMIFY_SENTRY_DSN": DSN,
            "STEMIFY_AUTH": "required",
            "STEMIFY_LOG_LEVEL": "DEBUG",
            "STEMIFY_STORAGE_URL": f"s3://{s3.name}/secrets",
        }
        cluster = Cluster(tmp_path, env)
        # The command line in process (click's runner): each `stemify` start-up costs seconds.
        runner = CliRunner(env=env)
        try:
            created = runner.invoke(stemify_cli, ["keys", "create", "--name", "secrets-test"])
            assert created.exit_code == 0, created.output
            api_key = created.stdout.strip()
            cluster.serve()
            cluster.start("worker", name="worker")
            with client(cluster.base, api_key) as api:
                job = submit(api, make_audio("song.wav", seconds=1.5), shifts="0")
                done = wait_for(api, job["id"])
                assert done["status"] == "succeeded", done
                assert httpx.get(cluster.base + done["zip_url"]).status_code == 200
                api.get("/jobs/nope")
                link = f"http://user:{DB_PASSWORD}@127.0.0.1:1/a.mp3"  # credentials: refused
                refused = api.post("/jobs", data={"url": link, "webhook_url": link})
                assert refused.status_code == 422 and DB_PASSWORD not in refused.text
            with client(cluster.base, api_key + "x") as wrong:
                assert wrong.get("/jobs").status_code == 401
            shown = [
                runner.invoke(stemify_cli, ["config", "show", *extra]) for extra in ([], ["--json"])
            ]
        finally:
            cluster.stop()
    logs = cluster.logs()
    assert done["id"] in logs  # the logs saw the job
    printed = "\n".join(result.output + created.stderr for result in shown)
    assert all(result.exit_code == 0 for result in shown)
    assert "STEMIFY_REDIS_URL=**********" in printed and "rediss" not in printed
    secrets = {
        "API key": api_key,
        "Redis password": REDIS_PASSWORD,
        "database password": DB_PASSWORD,
        "secret key": SECRET_KEY,
        "DSN key": DSN_KEY,
        "S3 secret key": s3.server.secret_key,
        "S3 access key": s3.server.access_key,
    }
    for name, secret in secrets.items():
        assert secret not in logs, f"the {name} is in the logs"
        assert secret not in printed, f"the {name} is in `stemify config show`"
    assert not re.search(r"[?&]sig=", logs), "a signed link's signature is in the logs"


def test_an_unreachable_database_is_one_line_without_its_password(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://stemify:{DB_PASSWORD}@127.0.0.1:{free_port()}/stemify"
    runner = CliRunner(env={"STEMIFY_DATA_DIR": str(tmp_path), "STEMIFY_DATABASE_URL": url})
    result = runner.invoke(stemify_cli, ["keys", "list"])
    assert result.exit_code == 1
    assert "cannot open the database (STEMIFY_DATABASE_URL)" in result.stderr
    assert "Connection refused" in result.stderr and "Traceback" not in result.output
    assert DB_PASSWORD not in result.output
