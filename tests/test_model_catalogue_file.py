"""STEMIFY_MODEL_CATALOGUE: extra downloadable models read from a YAML file, every mistake in it
named; the model state the API shows (installed / downloading / missing); and the queue's
delayed hand-back of a job whose model a worker lacks."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from support.model_server import MODEL_NAME, publish_model
from support.processes import STEMIFY

from stemify.errors import ConfigurationError
from stemify.models import official_catalogue
from stemify.models.autopull import AutoPull, installed_models, model_state
from stemify.models.extra import full_catalogue, read_catalogue_file
from stemify.queue.transport import LocalQueue, RedisQueue, make_broker

pytestmark = pytest.mark.unit

SHA = "ab" * 32
GOOD = {
    "mine": {
        "description": "ours",
        "sources": ["vocals", "rest"],
        "files": [
            {"name": "0a1b2c3d-abababab.th", "url_path": "x/0a1b.th", "sha256": SHA, "size": 9}
        ],
    }
}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "catalogue.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_catalogue_file_adds_its_models(tmp_path: Path) -> None:
    catalogue = full_catalogue(write(tmp_path, GOOD))
    assert "htdemucs" in catalogue
    entry = catalogue["mine"]
    assert entry.sources == ("vocals", "rest") and entry.size_bytes == 9
    assert yaml.safe_load(entry.bag_yaml) == {"models": ["0a1b2c3d"]}
    assert full_catalogue(None) == official_catalogue()
    assert list(read_catalogue_file(write(tmp_path, GOOD))) == ["mine"]


def bad_file(name: str = "0a1b2c3d-abababab.th", **overrides: object) -> dict[str, object]:
    file = {"name": name, "url_path": "x/y.th", "sha256": SHA, "size": 9, **overrides}
    return {"mine": {"files": [file]}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "expected a mapping of model names"),
        ({"mine": {"files": []}}, "mine: needs a non-empty list of files"),
        ({"mine": {"files": ["x"]}}, "every entry of files must be a mapping"),
        (bad_file("../evil.th"), "is not a <signature>-<hash>.th name"),
        (bad_file(url_path=""), "has no url_path"),
        (bad_file(sha256="abababab"), "needs a full sha256"),
        (bad_file(size=-1), "size of 0a1b2c3d-abababab.th must be a positive number"),
        ({"htdemucs": GOOD["mine"]}, "htdemucs: already an official model's name"),
    ],
)
def test_every_mistake_in_the_file_is_named(tmp_path: Path, data: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match="STEMIFY_MODEL_CATALOGUE") as caught:
        full_catalogue(write(tmp_path, data))
    assert message in caught.value.message


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read it"):
        full_catalogue(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [unclosed")
    with pytest.raises(ConfigurationError, match="cannot read it"):
        full_catalogue(bad)


def test_model_state_of_a_model_no_catalogue_knows(tmp_path: Path, model_dir: Path) -> None:
    auto = AutoPull("nosuch", tmp_path, "http://127.0.0.1:9/", full_catalogue(None))
    assert auto.start() is False
    state = auto.state()
    assert state.state == "missing" and "not in the catalogue" in str(state.reason)
    assert auto.arriving() is None and auto.status() is None
    assert model_state("tiny", True, auto).state == "installed"
    other = model_state("htdemucs", False, auto)
    assert other.state == "missing" and "stemify models pull htdemucs" in str(other.reason)
    assert {"tiny", "tinybag", "tiny6"} <= set(installed_models(model_dir))
    assert installed_models(tmp_path / "none") == []


def test_an_installed_model_is_not_fetched(model_dir: Path) -> None:
    auto = AutoPull("tiny", model_dir, "http://127.0.0.1:9/", full_catalogue(None))
    assert auto.start() is False and auto.wait(0) and auto.error is None
    assert auto.state().state == "installed"


def test_models_pull_installs_a_model_of_the_catalogue_file(tmp_path: Path) -> None:
    server, catalogue, data = publish_model(tmp_path)
    try:
        env = {
            **os.environ,
            "STEMIFY_MODEL_CATALOGUE": str(catalogue),
            "STEMIFY_MODEL_BASE_URL": server.base_url,
            "STEMIFY_MODEL_DIR": str(tmp_path / "models"),
        }
        done = subprocess.run(
            [STEMIFY, "models", "pull", MODEL_NAME], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert installed_models(tmp_path / "models") == [MODEL_NAME]
        assert [p.read_bytes() == data for p in (tmp_path / "models").glob("*.th")] == [True]
        env["STEMIFY_MODEL_CATALOGUE"] = str(tmp_path / "missing.yaml")
        done = subprocess.run(
            [STEMIFY, "models", "pull", MODEL_NAME], env=env, capture_output=True, text=True
        )
        assert done.returncode == 1 and "STEMIFY_MODEL_CATALOGUE" in done.stderr
    finally:
        server.close()


def test_a_delayed_message_counts_as_pending(redis_url: str, redis_prefix: str) -> None:
    """The reconciler must not re-send a job whose message waits in Dramatiq's delay queue
    (a worker without its model handed it on)."""
    queue = RedisQueue(make_broker(redis_url, namespace=f"{redis_prefix}-dramatiq"))
    try:
        queue.enqueue("job-now")
        queue.enqueue("job-later", delay_s=60)
        assert queue.pending() == {"job-now", "job-later"}
        assert queue.depth() == 2
    finally:
        queue.close()


def test_a_delayed_local_message_arrives_later() -> None:
    queue = LocalQueue()
    queue.enqueue("later", delay_s=0.2)
    assert queue.pending() == set()
    assert queue.take(timeout=5) == "later"
