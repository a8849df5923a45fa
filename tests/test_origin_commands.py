"""The commands of the document stemify grew from (``../shared/reference``), run as written
against a real `stemify serve`: a link sent as ``youtube_url`` to ``POST /api/v1/stemify`` with
the quantized ``mdx_extra_q``, and the runbook's ``curl .../health | jq '.queue_status'``.

The link points at a file served on 127.0.0.1, and no weights can be downloaded here: the model
is a random-weight stand-in for ``mdx_extra_q`` in demucs' own quantized format. demucs checks
each file's sha256 prefix against its name, so a stand-in cannot take the release's own file
names; it is installed as a local bag of the same shape (``mdx_extra_q_standin``)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support.processes import Cluster, FileServer, client, wait_for

from stemify.testing.random_models import make_quantized_official_repo

pytestmark = pytest.mark.service

MakeAudio = Callable[..., Path]
MODEL = "mdx_extra_q_standin"


def test_origin_document_commands_work_as_written(tmp_path: Path, make_audio: MakeAudio) -> None:
    models = tmp_path / "models"
    models.mkdir()
    make_quantized_official_repo(models, "mdx_extra_q")
    (models / "mdx_extra_q.yaml").rename(models / f"{MODEL}.yaml")
    song = FileServer(make_audio("song.mp3", seconds=1.5))
    cluster = Cluster(
        tmp_path,
        {
            "STEMIFY_DATA_DIR": str(tmp_path / "data"),
            "STEMIFY_MODEL_DIR": str(models),
            "STEMIFY_DEFAULT_MODEL": MODEL,
            "STEMIFY_ALLOW_LOOPBACK_URLS": "1",
        },
    )
    try:
        cluster.serve()
        submitted = subprocess.run(
            [
                "curl", "-s", "-X", "POST", f"{cluster.base}/api/v1/stemify",
                "-F", f"youtube_url={song.url}", "-F", f"model={MODEL}",
            ],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        job = json.loads(submitted.stdout)
        assert job["status"] == "queued" and job["model"] == MODEL, job
        assert job["input"]["source"] == "url" and job["input"]["url"] == song.url

        monitored = subprocess.run(
            f"curl -s {cluster.base}/api/v1/health | jq '.queue_status'",
            shell=True, capture_output=True, text=True, check=True, timeout=30,
        )  # fmt: skip
        queue = json.loads(monitored.stdout)
        assert queue is not None and {"depth", "running", "workers_alive"} <= set(queue)

        with client(cluster.base) as api:
            done = wait_for(api, job["id"], timeout=180)
        assert done["status"] == "succeeded", done["error"]
        assert {s["name"] for s in done["stems"]} == {"drums", "bass", "other", "vocals"}
    finally:
        cluster.stop()
        song.close()
