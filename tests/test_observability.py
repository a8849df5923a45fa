"""Metrics, logs, health and error tracking, from real `stemify serve` / `stemify worker`
processes (and, for Sentry, the real client in this process with a recording transport)."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import sentry_sdk
import structlog
from fastapi.testclient import TestClient
from prometheus_client import values as prometheus_values
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport
from support.processes import Cluster, Receiver, client, embedded_env, free_port, submit, wait_for
from test_service_distributed import distributed_env

from stemify import __version__
from stemify.api.app import create_app
from stemify.db.database import Database
from stemify.jobs.store import JobStore
from stemify.keys.store import KeyStore
from stemify.keys.usage import UsageLedger
from stemify.observability.logging import bound, configure_logging
from stemify.observability.metrics import enable_multiprocess
from stemify.observability.sentry import init_sentry
from stemify.queue.registry import WorkerRegistry
from stemify.services import Services, build_services
from stemify.settings import Settings
from stemify.worker.pool import EmbeddedWorkers

pytestmark = pytest.mark.service

MakeAudio = Callable[..., Path]
MakeServices = Callable[..., Services]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def broken_model_dir(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """The test models, with ``tiny6``'s weights truncated: jobs asking for it fail in the
    worker with model_load_failed (an operator's problem), while ``tiny`` works."""
    directory = tmp_path_factory.mktemp("broken-models")
    shutil.copytree(model_dir, directory, dirs_exist_ok=True)
    (weights,) = directory.glob("aaaa0003-*.th")
    weights.write_bytes(weights.read_bytes()[:1000])
    return directory


def scrape(base: str) -> Samples:
    response = httpx.get(f"{base}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over the samples whose labels include ``labels`` (0 if none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"a log line is not JSON: {line!r}")
    return parsed


@pytest.fixture
def cluster(broken_model_dir: Path, tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(
        tmp_path,
        embedded_env(
            tmp_path,
            broken_model_dir,
            {
                "STEMIFY_WORKER_CONCURRENCY": "2",
                "STEMIFY_SECRET_KEY": "observability-secret-key",
                "STEMIFY_LOG_FORMAT": "json",
                "STEMIFY_HEARTBEAT_INTERVAL_S": "0.5",
                "STEMIFY_ALLOW_LOOPBACK_URLS": "1",  # the webhook receiver
            },
        ),
    )
    yield running
    running.stop()


def test_embedded_metrics_logs_and_health(cluster: Cluster, make_audio: MakeAudio) -> None:
    serve = cluster.serve()
    api = client(cluster.base)
    receiver = Receiver()
    try:
        song = make_audio("song.wav", seconds=2.0)
        first = submit(api, song, shifts="0", webhook_url=receiver.url)
        done = wait_for(api, first["id"])
        assert done["status"] == "succeeded", done
        again = submit(api, song, shifts="0")  # same input and parameters: a dedup hit
        assert again["status"] == "succeeded" and again["cache_hit"]
        broken = wait_for(api, submit(api, song, model="tiny6")["id"])
        assert broken["status"] == "failed", broken
        assert broken["error"]["code"] == "model_load_failed"
        deadline = time.monotonic() + 10
        while not receiver.bodies and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        receiver.close()

    samples = scrape(cluster.base)
    assert value(samples, "stemify_jobs_submitted_total", model="tiny", source="upload") == 2
    assert value(samples, "stemify_jobs_submitted_total", model="tiny6") == 1
    succeeded = {"model": "tiny", "status": "succeeded", "error_code": ""}
    assert value(samples, "stemify_jobs_finished_total", **succeeded) == 2
    assert value(samples, "stemify_dedup_cache_hits_total", model="tiny") == 1
    failed = {"model": "tiny6", "status": "failed", "error_code": "model_load_failed"}
    assert value(samples, "stemify_jobs_finished_total", **failed) == 1
    # Only the job that really ran has timings; the cache hit does not.
    for stage in ("decoding", "separating", "encoding", "storing"):
        assert value(samples, "stemify_job_stage_seconds_count", stage=stage, model="tiny") == 1
    assert value(samples, "stemify_job_stage_seconds_sum", stage="separating") > 0
    assert value(samples, "stemify_job_realtime_factor_count", model="tiny") == 1
    assert value(samples, "stemify_job_realtime_factor_sum", model="tiny") > 0
    assert value(samples, "stemify_webhook_deliveries_total", outcome="delivered") == 1
    assert value(samples, "stemify_model_cache_loads_total", model="tiny") == 1
    assert value(samples, "stemify_model_cache_bytes") > 0
    assert value(samples, "stemify_worker_slots") == 2
    assert value(samples, "stemify_worker_busy_slots") == 0
    assert value(samples, "stemify_queue_depth") == 0
    assert value(samples, "stemify_jobs_running") == 0
    assert value(samples, "stemify_workers_alive") == 1
    assert value(samples, "stemify_workers_lost") == 0
    assert value(samples, "stemify_storage_free_bytes") > 0
    job_route = {"route": "/api/v1/jobs/{job_id}", "method": "GET", "status": "200"}
    assert value(samples, "stemify_http_requests_total", **job_route) >= 1
    assert value(samples, "stemify_http_requests_total", route="/api/v1/jobs", status="202") >= 1
    assert value(samples, "stemify_http_request_duration_seconds_count", method="POST") >= 3
    # An unknown path is counted under one label, not one per path.
    assert api.get("/no/such/thing-123").status_code == 404
    samples = scrape(cluster.base)
    assert value(samples, "stemify_http_requests_total", route="unmatched", status="404") == 1
    assert not any("thing-123" in str(labels) for _, labels in samples)

    # Health carries the queue and the workers with their last heartbeat.
    health = api.get("/health").json()
    assert health["status"] == "ok"
    assert health["queue"] == {
        "depth": 0, "running": 0, "oldest_queued_age_s": None, "workers_alive": 1,
    }  # fmt: skip
    (worker,) = health["workers"]
    assert worker["last_seen"].endswith("Z") and 0 <= worker["last_seen_age_s"] < 10
    ready = api.get("/ready").json()
    assert ready["queue"]["workers_alive"] == 1 and ready["workers"][0]["id"] == worker["id"]

    # A request id is taken from the caller when sane, else made; echoed either way.
    sent = api.get(f"/jobs/{first['id']}", headers={"X-Request-ID": "trace-abc.123"})
    assert sent.headers["x-request-id"] == "trace-abc.123"
    odd = api.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})
    assert odd.headers["x-request-id"] != "bad id\twith spaces"
    assert len(odd.headers["x-request-id"]) == 32

    cluster.stop()
    lines = json_lines(serve.output())
    assert all({"event", "level", "timestamp"} <= line.keys() for line in lines)
    traced = [line for line in lines if line.get("request_id") == "trace-abc.123"]
    assert traced and all(line["job_id"] == first["id"] for line in traced)
    assert any(line.get("status") == 200 and "duration_ms" in line for line in traced)
    # Worker lines of the broken job carry its id, the failure among them at error level.
    about_broken = [line for line in lines if line.get("job_id") == broken["id"]]
    errors = [line for line in about_broken if line["level"] == "error"]
    assert len(errors) == 1 and "model_load_failed" in errors[0]["event"]
    assert any("claimed" in line["event"] for line in about_broken)
    # Each submission logs one line tying its request id to the new job's id.
    submitted = [line for line in lines if "submitted" in line["event"]]
    assert sorted(line["job_id"] for line in submitted) == sorted(
        [first["id"], again["id"], broken["id"]]
    )
    assert all(len(line["request_id"]) == 32 for line in submitted)
    assert "observability-secret-key" not in serve.output()


@pytest.fixture
def distributed(
    tmp_path: Path, model_dir: Path, postgres_url: str, redis_url: str, redis_prefix: str
) -> Iterator[Cluster]:
    env = distributed_env(tmp_path, model_dir, postgres_url, redis_url, redis_prefix)
    # Read only by `stemify worker`: its own /metrics, as a worker on another machine would.
    port = str(free_port())
    running = Cluster(
        tmp_path, {**env, "STEMIFY_LOG_FORMAT": "json", "STEMIFY_WORKER_METRICS_PORT": port}
    )
    yield running
    running.stop()


def test_worker_process_metrics_reach_the_api(distributed: Cluster, make_audio: MakeAudio) -> None:
    distributed.serve()
    worker = distributed.start("worker", "--concurrency", "1", name="worker")
    api = client(distributed.base)
    job = submit(api, make_audio("song.wav", seconds=1.5), shifts="0")
    done = wait_for(api, job["id"], timeout=180)
    assert done["status"] == "succeeded", distributed.logs()

    samples = scrape(distributed.base)
    succeeded = {"model": "tiny", "status": "succeeded"}
    assert value(samples, "stemify_jobs_finished_total", **succeeded) == 1
    assert value(samples, "stemify_job_stage_seconds_count", stage="separating") == 1
    assert value(samples, "stemify_model_cache_loads_total", model="tiny") == 1
    assert value(samples, "stemify_worker_slots") == 1
    assert value(samples, "stemify_workers_alive") == 1
    own = scrape(f"http://127.0.0.1:{distributed.env['STEMIFY_WORKER_METRICS_PORT']}")
    assert value(own, "stemify_jobs_finished_total", **succeeded) == 1
    assert value(own, "stemify_worker_slots") == 1

    worker.stop()
    samples = scrape(distributed.base)
    # The stopped worker's live gauges go; what it counted stays (totals never fall).
    assert value(samples, "stemify_worker_slots") == 0
    assert value(samples, "stemify_model_cache_bytes") == 0
    assert value(samples, "stemify_jobs_finished_total", **succeeded) == 1
    worker_lines = json_lines(worker.output())
    assert any(line.get("job_id") == job["id"] for line in worker_lines)


class RecordingTransport(Transport):
    """A Sentry transport that keeps envelopes instead of sending them: the real client
    builds, scopes and filters events, nothing goes over the network."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def events(self) -> list[dict[str, Any]]:
        found = [e.get_event() for e in self.envelopes]
        return [event for event in found if event is not None]


@pytest.fixture
def recording_sentry() -> Iterator[RecordingTransport]:
    transport = RecordingTransport()
    yield transport
    sentry_sdk.get_client().close()
    sentry_sdk.init(dsn=None)  # the rest of the test session runs without a client


def test_a_failing_job_is_reported_once_with_its_id(
    tmp_path: Path,
    broken_model_dir: Path,
    make_audio: MakeAudio,
    recording_sentry: RecordingTransport,
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        model_dir=broken_model_dir,
        default_model="tiny",
        secret_key=SecretStr("sentry-test-secret"),
        # Never contacted: the recording transport replaces the HTTP one.
        sentry_dsn=SecretStr("http://public@127.0.0.1:9/1"),
        sentry_environment="test",
        heartbeat_interval_s=0.2,
    )
    assert init_sentry(settings, transport=recording_sentry)
    services = build_services(settings)
    workers = EmbeddedWorkers(services, concurrency=1)
    workers.start()
    try:
        app = create_app(services, auth_required=False)
        with TestClient(app, base_url="http://testserver/api/v1") as api:
            song = make_audio("song.wav", seconds=1.0)
            ok = submit(api, song, model="tiny", shifts="0")
            broken = submit(api, song, model="tiny6")
            for job in (ok, broken):
                deadline = time.monotonic() + 60
                while api.get(f"/jobs/{job['id']}").json()["status"] in (
                    "queued", "running",
                ):  # fmt: skip
                    assert time.monotonic() < deadline, "the job did not finish"
                    time.sleep(0.1)
            assert api.get(f"/jobs/{ok['id']}").json()["status"] == "succeeded"
            failed = api.get(f"/jobs/{broken['id']}").json()
            assert failed["error"]["code"] == "model_load_failed"
    finally:
        workers.stop()
        services.close()
    sentry_sdk.flush()
    events = recording_sentry.events()
    assert len(events) == 1, events
    (event,) = events
    assert event["tags"]["job_id"] == broken["id"]
    assert event["level"] == "error"
    assert "model_load_failed" in event["logentry"]["formatted"]
    assert event["environment"] == "test"
    assert event["release"] == f"stemify@{__version__}"
    assert "sentry-test-secret" not in json.dumps(events)


def test_sentry_gets_no_secret_signature_or_local_variable(
    tmp_path: Path, recording_sentry: RecordingTransport
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        secret_key=SecretStr("sentry-scrub-secret-value"),
        sentry_dsn=SecretStr("http://public@127.0.0.1:9/1"),
    )
    assert init_sentry(settings, transport=recording_sentry)
    log = logging.getLogger("stemify.test")
    log.warning("connecting to redis://:hunter22pw@db:6379/0")  # a breadcrumb
    signed = "http://testserver/api/v1/jobs/j1/stems/vocals?expires=1&sig=SIGVALUE123"
    with sentry_sdk.isolation_scope() as scope:
        # What the ASGI integration attaches to an event raised during a download.
        scope.add_event_processor(
            lambda event, _hint: {
                **event,
                "request": {"url": signed, "query_string": "expires=1&sig=SIGVALUE123"},
            }
        )
        log.error("failed with key sentry-scrub-secret-value")
        try:
            sig = "LOCAL" + "SIG" + str(456)  # built, so only a variable could hold it
            raise RuntimeError(f"boom at redis://:hunter22pw@db ({len(sig)})")
        except RuntimeError:
            sentry_sdk.capture_exception()
    sentry_sdk.flush()
    events = recording_sentry.events()
    assert len(events) == 2, events
    sent = json.dumps(events)
    for secret in ("sentry-scrub-secret-value", "hunter22pw", "SIGVALUE123", "LOCALSIG456"):
        assert secret not in sent, secret
    assert all(e["request"]["url"] == signed.split("?")[0] for e in events)
    (logged,) = [e for e in events if "logentry" in e]
    assert "failed with key **********" in json.dumps(logged["logentry"])
    assert "boom at redis://:**********@db" in sent
    crumbs = [c.get("message") for c in logged["breadcrumbs"]["values"]]
    assert "connecting to redis://:**********@db:6379/0" in crumbs


def test_sentry_is_off_without_a_dsn(tmp_path: Path) -> None:
    before = sentry_sdk.get_client()
    transport = RecordingTransport()
    assert not init_sentry(Settings(data_dir=tmp_path), transport=transport)
    assert sentry_sdk.get_client() is before  # no client started
    sentry_sdk.capture_message("nobody records this")
    assert transport.envelopes == []


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()


def test_log_lines_carry_context_and_never_secrets(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", secrets=["sk_live_0123456789abcdef"], stream=out)
    stdlib = logging.getLogger("stemify.test")
    with bound(job_id="job-1", request_id="req-1"):
        stdlib.info("claimed with key %s", "sk_live_0123456789abcdef")
        structlog.get_logger("stemify.test").warning("fetching", url="https://u:hunter22@h/x")
    stdlib.debug("below the level")
    # As uvicorn logs (its loggers' levels are whatever earlier servers left them at).
    stdlib.info("up", extra={"color_message": "\x1b[1mup\x1b[0m"})
    try:
        raise ValueError("boom")
    except ValueError:
        stdlib.exception("failed")
    first, second, uvicorn_line, third = json_lines(out.getvalue())
    assert uvicorn_line["event"] == "up" and "color_message" not in uvicorn_line
    assert first["event"] == "claimed with key **********"
    assert (first["job_id"], first["request_id"], first["level"]) == ("job-1", "req-1", "info")
    assert second["url"] == "https://u:**********@h/x" and second["job_id"] == "job-1"
    assert "job_id" not in third and "ValueError: boom" in third["exception"]
    assert "hunter22" not in out.getvalue() and "0123456789abcdef" not in out.getvalue()

    console = io.StringIO()
    configure_logging("DEBUG", "console", stream=console)
    with bound(job_id="job-2"):
        stdlib.debug("decoding")
    text = console.getvalue()
    assert "decoding" in text and "job_id=job-2" in text and not text.startswith("{")


def test_a_process_start_clears_the_files_of_dead_processes(tmp_path: Path) -> None:
    exited = subprocess.Popen(["true"])
    exited.wait()
    dead, alive = exited.pid, os.getpid()
    for name in ("counter", "histogram", "gauge_livesum"):
        (tmp_path / f"{name}_{dead}.db").write_bytes(b"")
        (tmp_path / f"{name}_{alive}.db").write_bytes(b"")
    try:
        enable_multiprocess(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            f"counter_{alive}.db", f"gauge_livesum_{alive}.db", f"histogram_{alive}.db",
        ]  # fmt: skip
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        prometheus_values.ValueClass = prometheus_values.get_value_class()


def test_health_and_metrics_answer_while_the_store_is_unreachable(
    make_services: MakeServices,
) -> None:
    """Nothing listens on port 1: every store query fails to connect, for real."""
    built = make_services()
    unreachable = Database.from_url("postgresql+psycopg://postgres@127.0.0.1:1/test")
    services = replace(
        built,
        db=unreachable,
        store=JobStore(unreachable),
        keys=KeyStore(unreachable),
        usage=UsageLedger(unreachable),
        workers=WorkerRegistry(unreachable),
    )
    with TestClient(create_app(services, auth_required=False)) as api:
        health = api.get("/api/v1/health")
        assert health.status_code == 200
        assert health.json() == {
            "status": "ok", "queue": None, "queue_status": None, "workers": [],
        }  # fmt: skip
        ready = api.get("/api/v1/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["store"]["ok"] is False
        metrics = api.get("/metrics")
        assert metrics.status_code == 200
        assert "stemify_http_requests_total" in metrics.text
        assert "stemify_queue_depth" not in metrics.text  # unknown, not a made-up 0
