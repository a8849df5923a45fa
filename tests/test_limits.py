"""Rate limits and quotas per API key: each limit answers 429 with Retry-After and says which
limit; GET /usage; per-key limits in the store (SQLite and PostgreSQL) and on the command line;
the Redis-shared limiter against the real Redis."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import httpx
import pytest
from alembic import command
from alembic.config import Config
from click.testing import CliRunner, Result
from sqlalchemy import text
from support.live import Live, add_key, error_of, live_app, settings_for
from support.processes import free_port

from stemify.api.quotas import seconds_to_midnight
from stemify.api.rate_limits import RateLimiter
from stemify.cli.main import cli as stemify_cli
from stemify.clock import now_utc
from stemify.db.database import MIGRATIONS, Database
from stemify.jobs.model import Job, JobSpec
from stemify.keys.limits import KeyLimits
from stemify.keys.store import KeyStore, hash_key
from stemify.keys.usage import UsageLedger
from stemify.services import Services

pytestmark = pytest.mark.api

MakeAudio = Callable[..., Path]
UNLIMITED = {
    "submissions_per_minute": 0,
    "reads_per_minute": 0,
    "max_running_jobs": 0,
    "daily_audio_minutes": 0,
}


@pytest.fixture
def live(tmp_path: Path, model_dir: Path) -> Iterator[Live]:
    with live_app(settings_for(tmp_path, model_dir)) as running:
        yield running


def key_with(live: Live, name: str, **limits: float) -> str:
    return add_key(live.keys, name, KeyLimits(**{**UNLIMITED, **limits}))  # type: ignore[arg-type]


def retry_after(response: httpx.Response) -> int:
    assert response.status_code == 429, response.text
    return int(response.headers["Retry-After"])


def post(api: httpx.Client, audio: Path | None = None) -> httpx.Response:
    if audio is None:  # no source: 400 once past the limits, cheap to send
        return api.post("/jobs", data={"model": "tiny"})
    with audio.open("rb") as file:
        return api.post("/jobs", files={"file": (audio.name, file)})


def test_submission_rate_per_key(live: Live) -> None:
    slow, other = key_with(live, "slow", submissions_per_minute=2), key_with(live, "other")
    with live.client(slow) as api, live.client(other) as api_other:
        for _ in range(2):
            error_of(post(api), 400, "bad_request")
        response = post(api)
        message = error_of(response, 429, "rate_limited")
        assert "at most 2 job submissions per minute" in message
        assert 1 <= retry_after(response) <= 60
        assert api.get("/jobs").status_code == 200  # reads have their own budget
        for _ in range(5):
            error_of(post(api_other), 400, "bad_request")  # another key is not slowed


def test_read_rate_per_key(live: Live) -> None:
    key = key_with(live, "reader", reads_per_minute=3)
    with live.client(key) as api:
        for path in ("/jobs", "/usage", "/jobs/nope"):
            assert api.get(path).status_code in (200, 404)
        response = api.get("/jobs")
        assert "at most 3 requests per minute" in error_of(response, 429, "rate_limited")
        assert 1 <= retry_after(response) <= 60
        error_of(post(api), 400, "bad_request")  # submitting is still allowed


def test_running_jobs_limit(live: Live, make_audio: MakeAudio) -> None:
    key = key_with(live, "busy", max_running_jobs=1)
    song = make_audio("song.wav", seconds=1.0)
    with live.client(key) as api:
        first = post(api, song)
        assert first.status_code == 202, first.text
        response = post(api, song)
        message = error_of(response, 429, "rate_limited")
        assert "running jobs limit" in message and "at most 1" in message
        assert retry_after(response) == 30
        assert api.post(f"/jobs/{first.json()['id']}/cancel").status_code == 202
        assert post(api, song).status_code == 202
    assert len(os.listdir(live.services.storage.root / "jobs")) == 2  # type: ignore[attr-defined]


def test_daily_audio_minutes(live: Live, make_audio: MakeAudio) -> None:
    key = key_with(live, "thrifty", daily_audio_minutes=0.05)  # 3 s a day
    song = make_audio("song.wav", seconds=2.0)
    with live.client(key) as api:
        first = post(api, song)
        assert first.status_code == 202, first.text
        # Deleting a job does not give its minutes back.
        assert api.delete(f"/jobs/{first.json()['id']}").status_code == 204
        response = post(api, song)
        message = error_of(response, 429, "rate_limited")
        assert "daily audio limit" in message and "0.05 minutes" in message
        assert "midnight UTC" in message
        assert abs(retry_after(response) - seconds_to_midnight(datetime.now(UTC))) < 5
        assert api.get("/jobs").json()["jobs"] == []
        usage = api.get("/usage").json()
    # The refused upload left nothing behind.
    storage_root = live.services.storage.root  # type: ignore[attr-defined]
    assert [p for p in storage_root.rglob("*") if p.is_file()] == []
    assert usage["daily_audio_minutes"]["limit"] == 0.05
    assert usage["daily_audio_minutes"]["used"] == pytest.approx(2 / 60, abs=0.01)


def test_usage_shows_limits_and_use(live: Live, make_audio: MakeAudio) -> None:
    key = key_with(
        live,
        "user",
        submissions_per_minute=5,
        reads_per_minute=50,
        max_running_jobs=3,
        daily_audio_minutes=60,
    )
    default_key = add_key(live.keys, "defaults")
    with live.client(key) as api:
        assert post(api, make_audio("song.wav", seconds=1.5)).status_code == 202
        usage = api.get("/usage").json()
    assert usage["key_id"] == "user"
    assert usage["submissions_per_minute"] == {
        "limit": 5, "remaining": 4, "reset_in_s": usage["submissions_per_minute"]["reset_in_s"]
    }  # fmt: skip
    assert 0 < usage["submissions_per_minute"]["reset_in_s"] <= 60
    assert usage["reads_per_minute"]["limit"] == 50
    assert usage["reads_per_minute"]["remaining"] == 49  # this very request
    assert usage["max_running_jobs"] == {"limit": 3, "used": 1}
    assert usage["daily_audio_minutes"]["limit"] == 60
    assert usage["daily_audio_minutes"]["used"] == pytest.approx(1.5 / 60, abs=0.01)
    with live.client(default_key) as api:
        usage = api.get("/usage").json()
    settings = live.services.settings
    assert usage["submissions_per_minute"]["limit"] == settings.submissions_per_minute
    assert usage["max_running_jobs"] == {"limit": settings.max_running_jobs, "used": 0}
    with live.client() as anonymous:
        error_of(anonymous.get("/usage"), 401, "unauthorized")


def test_auth_off_is_unlimited_unless_asked(tmp_path: Path, model_dir: Path) -> None:
    tight = {"reads_per_minute": 2, "submissions_per_minute": 1}
    with (
        live_app(settings_for(tmp_path / "a", model_dir, **tight), auth_required=False) as free,
        free.client() as api,
    ):
        assert all(api.get("/jobs").status_code == 200 for _ in range(5))
    limited = settings_for(tmp_path / "b", model_dir, limit_anonymous=True, **tight)
    with live_app(limited, auth_required=False) as live, live.client() as api:
        assert api.get("/jobs").status_code == 200
        assert api.get("/jobs").status_code == 200
        assert "at most 2 requests" in error_of(api.get("/jobs"), 429, "rate_limited")
        error_of(post(api), 400, "bad_request")
        assert "1 job submissions" in error_of(post(api), 429, "rate_limited")


def test_limiter_is_shared_through_redis(redis_url: str, redis_prefix: str) -> None:
    """Two limiters on one Redis, as in two API processes, count together; another prefix
    (another deployment) does not."""
    first = RateLimiter(redis_url, redis_prefix)
    second = RateLimiter(redis_url, redis_prefix)
    elsewhere = RateLimiter(redis_url, f"{redis_prefix}-other")
    assert first.hit("submit", "key:a", 3) is None
    assert second.hit("submit", "key:a", 3) is None
    assert first.hit("submit", "key:a", 3) is None
    wait = second.hit("submit", "key:a", 3)
    assert wait is not None and 1 <= wait <= 60
    assert second.window("submit", "key:a", 3).remaining == 0
    assert first.hit("submit", "key:b", 3) is None  # per identity
    assert first.hit("read", "key:a", 3) is None  # per bucket
    assert elsewhere.hit("submit", "key:a", 3) is None


def test_two_api_processes_share_the_rate_through_redis(
    tmp_path: Path, model_dir: Path, redis_url: str, redis_prefix: str
) -> None:
    common = {
        "redis_url": redis_url, "redis_prefix": redis_prefix, "secret_key": "s" * 32,
        "database_url": f"sqlite:///{tmp_path / 'shared.db'}", "reads_per_minute": 4,
    }  # fmt: skip
    with (
        live_app(settings_for(tmp_path / "a", model_dir, **common)) as one,
        live_app(settings_for(tmp_path / "b", model_dir, **common)) as two,
    ):
        key = add_key(one.keys, "shared")
        with one.client(key) as api_one, two.client(key) as api_two:
            statuses = [api.get("/jobs").status_code for api in (api_one, api_two) * 3]
    assert statuses == [200, 200, 200, 200, 429, 429]


# ---- the store ---------------------------------------------------------------------------------


def test_key_limits_round_trip(db: Database) -> None:
    keys = KeyStore(db)
    keys.add("k1", "one", hash_key("s1"), "sk_one", False, now_utc(), KeyLimits(5, None, 2))
    keys.add("k2", "two", hash_key("s2"), "sk_two", False, now_utc())
    found = keys.by_hash(hash_key("s1"))
    assert found is not None and found.limits == KeyLimits(5, None, 2, None)
    assert keys.all()[1].limits == KeyLimits()
    changes = {"submissions_per_minute": None, "daily_audio_minutes": 1.5}
    updated = keys.update_limits("sk_one", changes)
    assert updated is not None and updated.limits == KeyLimits(None, None, 2, 1.5)
    assert keys.update_limits("missing", {"max_running_jobs": 1}) is None
    keys.revoke("k2", now_utc())
    assert keys.update_limits("k2", {"max_running_jobs": 1}) is None
    with pytest.raises(ValueError, match="not key limits: admin"):
        keys.update_limits("k1", {"admin": 1})


def test_audio_ledger_counts_uploads_and_links_once(services: Services) -> None:
    store, usage, today = services.store, services.usage, now_utc().date()
    upload = Job(
        id=uuid.uuid4().hex, spec=JobSpec(model="tiny"), source="upload", created_at=now_utc(),
        owner="k", input_duration_s=90.0,
    )  # fmt: skip
    link = Job(
        id=uuid.uuid4().hex, spec=JobSpec(model="tiny"), source="url", created_at=now_utc(),
        owner="k", source_url="https://example.com/a.mp3",
    )  # fmt: skip
    services.jobs.submit(upload)
    services.jobs.submit(link)
    assert usage.seconds("k", today) == 90.0
    assert store.active_count("k") == 2 and store.active_count("other") == 0
    # A retried link job fetches again but is charged once: the store says which fetch was
    # the first, and only that one is charged (worker.runner).
    firsts = [
        store.set_input(link.id, key="k1", sha256="0" * 64, size=1, duration_s=30.0, fmt="mp3")
        for _ in range(2)
    ]
    assert firsts == [True, False]
    usage.charge("k", today, 30.0)
    assert usage.seconds("k", today) == 120.0
    store.delete(upload.id)
    assert usage.seconds("k", today) == 120.0
    assert usage.seconds("k", date(2000, 1, 1)) == 0.0


# ---- the command line -----------------------------------------------------------------------


def test_keys_create_update_and_list(tmp_path: Path) -> None:
    # In process (click's runner): eight `stemify` start-ups would cost most of a minute.
    runner = CliRunner(env={"STEMIFY_DATA_DIR": str(tmp_path)})

    def cli(*args: str) -> Result:
        return runner.invoke(stemify_cli, list(args))

    created = cli(
        "keys", "create", "--name", "band", "--submissions-per-minute", "5",
        "--daily-audio-minutes", "90",
    )  # fmt: skip
    assert created.exit_code == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("sk_") and "submissions_per_minute=5 " in created.stderr
    assert "daily_audio_minutes=90" in created.stderr
    assert "max_running_jobs=default" in created.stderr
    prefix = secret[:10]
    updated = cli(
        "keys", "update", prefix, "--submissions-per-minute", "default",
        "--max-running-jobs", "2",
    )  # fmt: skip
    assert updated.exit_code == 0, updated.stderr
    assert "submissions_per_minute=default" in updated.stdout
    assert "max_running_jobs=2" in updated.stdout
    listed = cli("keys", "list")
    assert prefix in listed.stdout and "max_running_jobs=2 daily_audio_minutes=90" in listed.stdout
    for args, needle in [
        (("keys", "update", prefix), "nothing to change"),
        (
            ("keys", "update", prefix, "--submissions-per-minute", "fast"),
            "--submissions-per-minute takes a number or `default`",
        ),
        (("keys", "update", prefix, "--max-running-jobs", "-1"), "cannot be negative"),
        (
            ("keys", "update", "sk_nothere", "--submissions-per-minute", "1"),
            "no active key 'sk_nothere'",
        ),
    ]:
        failed = cli(*args)
        assert failed.exit_code != 0 and needle in failed.stderr, failed.stderr
    db = Database.from_url(f"sqlite:///{tmp_path / 'stemify.db'}")
    key = KeyStore(db).by_hash(hash_key(secret))
    db.close()
    assert key is not None and key.limits == KeyLimits(None, None, 2, 90.0)


def test_limiter_lets_requests_through_when_redis_is_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = RateLimiter(f"redis://:secret-pw@127.0.0.1:{free_port()}/0", "stemify-test")
    with caplog.at_level(logging.WARNING):
        assert all(limiter.hit("read", "key:a", 1) is None for _ in range(3))
    assert "rate limits not enforced" in caplog.text and "secret-pw" not in caplog.text
    assert limiter.window("read", "key:a", 3).remaining == 3


def test_upgrade_from_0001_keeps_keys_with_default_limits(db: Database) -> None:
    """A store made by the first release: its keys get NULL limits (the defaults)."""
    with db.engine.begin() as connection:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        command.downgrade(config, "0001")
    with db.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO api_keys (id, name, key_hash, prefix, admin, created_at) "
                "VALUES ('old', 'old', :hash, 'sk_old', false, :now)"
            ),
            {"hash": hash_key("old-secret"), "now": datetime(2026, 1, 1)},
        )
    db.migrate()
    key = KeyStore(db).by_hash(hash_key("old-secret"))
    assert key is not None and key.limits == KeyLimits()
    assert UsageLedger(db).seconds("old", date(2026, 1, 1)) == 0.0
