"""Shared fixtures: a model directory of random-weight Demucs models in demucs' own format,
and test audio made with the real ffmpeg."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stemify.db.database import Database
from stemify.jobs.store import JobStore
from stemify.services import Services, build_services
from stemify.settings import Settings
from stemify.testing.random_models import make_tiny_repo

SPEEDS = ("unit", "slow", "api", "service", "browser", "faults", "containers")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    unmarked = [
        item.nodeid for item in items if not any(item.get_closest_marker(s) for s in SPEEDS)
    ]
    if unmarked:
        raise pytest.UsageError(
            f"tests without a speed marker ({', '.join(SPEEDS)}): {', '.join(unmarked[:5])}"
        )


def pytest_configure(config: pytest.Config) -> None:
    missing = [tool for tool in ("ffmpeg", "ffprobe") if shutil.which(tool) is None]
    if missing:
        raise pytest.UsageError(
            f"{', '.join(missing)} not found: run `make test` (it installs ffmpeg with apt-get)"
        )


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models ``tiny`` (one HTDemucs), ``tinybag`` (a weighted bag of two), ``tiny6`` (6 stems)."""
    directory = tmp_path_factory.mktemp("models")
    make_tiny_repo(directory)
    return directory


MakeAudio = Callable[..., Path]


@pytest.fixture
def make_audio(tmp_path: Path) -> MakeAudio:
    """Render a test signal with ffmpeg: ``make_audio("x.flac", seconds=2, channels=2)``.

    Extra ffmpeg output options go in ``args`` (e.g. ``["-c:a", "libopus"]``)."""

    def make(
        name: str,
        seconds: float = 2.0,
        channels: int = 2,
        rate: int = 44100,
        args: list[str] | None = None,
        video: bool = False,
    ) -> Path:
        out = tmp_path / name
        layout = {1: "mono", 2: "stereo", 6: "5.1"}[channels]
        source = (
            f"sine=frequency=220:sample_rate={rate}:duration={seconds},"
            f"volume=0.5,aformat=channel_layouts={layout}"
        )
        noise = f"anoisesrc=d={seconds}:c=pink:r={rate}:a=0.1,aformat=channel_layouts={layout}"
        cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
        if video:
            cmd += ["-f", "lavfi", "-i", f"testsrc=size=64x64:rate=5:duration={seconds}"]
        cmd += ["-f", "lavfi", "-i", source, "-f", "lavfi", "-i", noise]
        audio_in = 1 if video else 0
        cmd += [
            "-filter_complex",
            f"[{audio_in}:a][{audio_in + 1}:a]amix=inputs=2:normalize=0[a]",
            "-map",
            "[a]",
        ]
        if video:
            cmd += ["-map", "0:v"]
        cmd += [*(args or []), str(out)]
        subprocess.run(cmd, check=True)
        return out

    return make


# ---- real services -----------------------------------------------------------------------------

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh schema in the machine's PostgreSQL, dropped afterwards."""
    import uuid

    import sqlalchemy

    schema = f"stemify_test_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    except sqlalchemy.exc.OperationalError as exc:
        pytest.fail(
            "PostgreSQL is not reachable at 127.0.0.1:5432 (database test): start it with "
            f"`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` ({exc})"
        )
    yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The machine's Redis; tests use their own key prefix (see ``redis_prefix``)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(
            "Redis is not reachable at 127.0.0.1:6379: start it with `redis-server --daemonize yes "
            f"--port 6379 --save '' --appendonly no` ({exc})"
        )
    yield REDIS_URL
    client.close()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    import uuid

    import redis

    prefix = f"stemify-test-{uuid.uuid4().hex[:8]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.close()


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated database, on SQLite and on the machine's PostgreSQL (a schema of its own)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    database = Database.from_url(url)
    database.migrate()
    yield database
    database.close()


@pytest.fixture
def store(db: Database) -> JobStore:
    """The job store over ``db`` (both backends)."""
    return JobStore(db)


MakeServices = Callable[..., Services]


@pytest.fixture
def make_services(tmp_path: Path, model_dir: Path) -> Iterator[MakeServices]:
    """Services as ``stemify serve`` builds them from Settings (embedded: SQLite and local
    storage in a data dir of their own), with settings overridden by keyword."""
    built: list[Services] = []

    def make(**overrides: Any) -> Services:
        settings = Settings(
            **{
                "model_dir": model_dir,
                "data_dir": tmp_path / f"services{len(built)}",
                "default_model": "tiny",
                **overrides,
            }
        )
        built.append(build_services(settings))
        return built[-1]

    yield make
    for services in built:
        services.close()


@pytest.fixture
def services(make_services: MakeServices) -> Services:
    return make_services()


# ---- S3: SeaweedFS (tests/support/s3.py) -------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One `weed mini` for the session, on 127.0.0.1 ports of its own."""
    from support.s3 import seaweedfs

    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3(s3_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh bucket (a ``support.s3.S3Bucket``); boto3's AWS_* variables point at the server,
    so S3Storage finds it as a deployment would, and nothing comes from the machine's config."""
    import contextlib
    import uuid

    from support.s3 import BOTO3_CLEARED, S3Bucket, boto3_env

    for name in BOTO3_CLEARED:
        monkeypatch.delenv(name, raising=False)
    for name, value in boto3_env(s3_server, tmp_path).items():
        monkeypatch.setenv(name, value)
    client = s3_server.admin
    name = f"test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name)
    yield S3Bucket(server=s3_server, name=name, client=client)
    with contextlib.suppress(Exception):  # the server's allowDeleteBucketNotEmpty: all goes
        client.delete_bucket(Bucket=name)


# ---- containers: the image of tests/support/containers.py ----------------------------------


@pytest.fixture(scope="session")
def image() -> Any:
    """The stemify image built from the Dockerfile with podman (a ``support.containers.Built``),
    once per session and cached between runs."""
    from support.containers import missing_tools, stemify_image

    missing = missing_tools()
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: run `make test-containers` (apt-get)")
    return stemify_image()
