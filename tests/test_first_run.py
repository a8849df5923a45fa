"""First run: embedded `stemify serve` with an empty model directory fetches the default model at
start (from a local release host), jobs submitted meanwhile wait for it, and a corrupt download
is refused and reported on /ready, /models, in the log and to the waiting jobs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from support.model_server import MODEL_NAME, ModelServer, publish_model
from support.processes import Cluster, client, submit, wait_for

pytestmark = pytest.mark.service

MakeAudio = Callable[..., Path]
# The 0.76 MB model arrives in about 5 s: long enough to submit a job while it downloads.
THROTTLE = 150_000


def first_run(tmp_path: Path, server: ModelServer, catalogue: Path) -> Cluster:
    return Cluster(
        tmp_path,
        {
            "STEMIFY_DATA_DIR": str(tmp_path / "data"),
            "STEMIFY_MODEL_DIR": str(tmp_path / "empty-models"),
            "STEMIFY_DEFAULT_MODEL": MODEL_NAME,
            "STEMIFY_MODEL_CATALOGUE": str(catalogue),
            "STEMIFY_MODEL_BASE_URL": server.base_url,
        },
    )


@pytest.fixture
def good(tmp_path: Path) -> Iterator[tuple[Cluster, bytes]]:
    server, catalogue, data = publish_model(tmp_path, bytes_per_s=THROTTLE)
    cluster = first_run(tmp_path, server, catalogue)
    yield cluster, data
    cluster.stop()
    server.close()


def model_entry(api: httpx.Client) -> dict[str, object]:
    models = api.get("/models").json()["models"]
    entry: dict[str, object] = next(m for m in models if m["name"] == MODEL_NAME)
    return entry


def test_the_model_arrives_and_a_job_sent_before_it_succeeds(
    good: tuple[Cluster, bytes], make_audio: MakeAudio, tmp_path: Path
) -> None:
    cluster, data = good
    song = make_audio("song.wav", seconds=1.0)
    cluster.serve()
    api = client(cluster.base)
    entry = model_entry(api)
    assert entry["state"] == "downloading", entry
    assert entry["installed"] is False and entry["reason"] is None
    ready = api.get("/ready")
    assert ready.status_code == 200, ready.text
    assert "downloading tinyremote" in ready.json()["checks"]["models"]["detail"]

    job = submit(api, song)  # accepted although the model is not there yet
    waiting = wait_for(api, job["id"], lambda j: j["stage"] == "waiting_for_model", timeout=30)
    assert waiting["status"] == "queued"
    percents = [model_entry(api)["percent"]]
    done = wait_for(api, job["id"], timeout=180)
    assert done["status"] == "succeeded", (done, cluster.logs())
    assert sorted(s["name"] for s in done["stems"]) == ["bass", "drums", "other", "vocals"]

    entry = model_entry(api)
    assert entry["state"] == "installed" and entry["installed"] is True, entry
    assert isinstance(percents[0], float) and 0 <= percents[0] <= 100
    installed = tmp_path / "empty-models"
    assert [p.read_bytes() == data for p in installed.glob("*.th")] == [True]
    assert api.get("/ready").status_code == 200
    assert "auto-pull: model tinyremote installed" in cluster.logs()


def test_a_corrupt_download_is_refused_and_reported(tmp_path: Path, make_audio: MakeAudio) -> None:
    server, catalogue, _ = publish_model(tmp_path, corrupt=True, bytes_per_s=THROTTLE)
    cluster = first_run(tmp_path, server, catalogue)
    try:
        song = make_audio("song.wav", seconds=1.0)
        cluster.serve()
        api = client(cluster.base)
        job = submit(api, song)
        failed = wait_for(api, job["id"], timeout=60)
        assert failed["status"] == "failed"
        assert failed["error"]["code"] == "model_download_failed", failed
        assert "checksum mismatch" in failed["error"]["message"]

        ready = api.get("/ready")
        assert ready.status_code == 503
        detail = ready.json()["checks"]["models"]
        assert detail["ok"] is False and "checksum mismatch" in detail["detail"], detail
        entry = model_entry(api)
        assert entry["state"] == "missing" and "checksum mismatch" in str(entry["reason"])
        # Nothing corrupt is left where the model would be loaded from.
        assert list((tmp_path / "empty-models").glob("*.th")) == []
        # One error line in the log, not one per job or per probe.
        time.sleep(0.5)
        errors = [
            line for line in cluster.logs().splitlines() if "auto-pull" in line and "failed" in line
        ]
        assert len(errors) == 1, errors
        # A job sent after the failure is refused at once, saying how to install the model.
        late = api.post("/jobs", files={"file": ("s.wav", song.read_bytes())})
        assert late.status_code == 422 and late.json()["error"]["code"] == "model_not_found"
    finally:
        cluster.stop()
        server.close()


def test_auto_pull_off_leaves_the_model_missing(tmp_path: Path) -> None:
    server, catalogue, _ = publish_model(tmp_path)
    cluster = first_run(tmp_path, server, catalogue)
    cluster.env["STEMIFY_AUTO_PULL"] = "0"
    try:
        cluster.serve()
        api = client(cluster.base)
        ready = api.get("/ready")
        assert ready.status_code == 503
        assert "stemify models pull" in ready.json()["checks"]["models"]["detail"]
        assert not (tmp_path / "empty-models").exists()
    finally:
        cluster.stop()
        server.close()
