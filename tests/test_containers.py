"""The image, built from the repository's Dockerfile with Debian's podman and run for real: as
a non-root user, with a passing health check, an API and a worker container over Redis,
PostgreSQL and SeaweedFS, the baked model with no network, SIGTERM handing a job back.

One image for the session (tests/support/containers.py, cached between runs by a hash of its
inputs); host networking, every port on 127.0.0.1."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.containers import (
    READ_ONLY,
    Built,
    Container,
    podman,
    wait_answering,
)
from support.processes import client, free_port, submit, wait_for
from support.s3 import boto3_env

# The first test also builds the image (minutes on a cold cache, longer than the default 600 s).
pytestmark = [pytest.mark.containers, pytest.mark.timeout(1800)]

MakeAudio = Callable[..., Path]
UID = "10001"


@pytest.fixture
def containers() -> Iterator[list[Container]]:
    started: list[Container] = []
    yield started
    for container in started:
        container.remove()


def api_container(
    image: Built, containers: list[Container], env: dict[str, str]
) -> tuple[Container, str]:
    """``stemify serve`` on a free loopback port, answering its health route."""
    port = free_port()
    api = Container(
        image.image, "serve", "--host", "127.0.0.1", "--port", str(port),
        env={"HEALTHCHECK_PORT": str(port), "STEMIFY_DEFAULT_MODEL": image.model, **env},
    )  # fmt: skip
    containers.append(api)
    base = f"http://127.0.0.1:{port}"
    wait_healthy(api, base)
    return api, base


def wait_healthy(container: Container, base: str, timeout: float = 90) -> None:
    answered = wait_answering(f"{base}/api/v1/health", timeout, alive=container.running)
    assert answered, f"no answer on {base}:\n{container.logs()}"


def test_image_runs_as_non_root_with_no_build_tools_or_build_secrets(image: Built) -> None:
    config = podman("image", "inspect", "--format", "{{json .Config}}", image.image).stdout
    assert f'"User":"{UID}:{UID}"' in config
    assert '"Entrypoint":["stemify"]' in config
    assert '"Cmd":["serve","--host","0.0.0.0","--port","8000"]' in config
    # Nothing of the build's test-only mounts or arguments stays in the image's settings.
    assert "PIP_CERT" not in config and "/run/build" not in config

    def sh(script: str) -> str:
        return podman(
            "run", "--rm", "--network=none", "--entrypoint", "/bin/sh", image.image, "-c", script
        ).stdout.strip()  # fmt: skip

    assert sh("id -u; id -g") == f"{UID}\n{UID}"
    # podman leaves the empty mount points of the build's -v mounts (the CA bundle, the
    # wheels), never their content; no compiler is left in the image.
    assert sh("find /run/build -type f -size +0 2>/dev/null; true") == ""
    assert sh("for tool in gcc cc c++ make; do command -v $tool; done; true") == ""
    assert sh("ffmpeg -version").startswith("ffmpeg version")
    assert image.model in sh("stemify models list --json")


def test_health_check_passes(image: Built, containers: list[Container]) -> None:
    api, _ = api_container(image, containers, {})
    # The image's own HEALTHCHECK command, run by podman inside the container.
    checked = podman("healthcheck", "run", api.name, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr + api.logs()
    # The same command fails where nothing answers: the check is not always true.
    test = json.loads(podman("image", "inspect", "--format", "{{json .Config.Healthcheck}}",
                             image.image).stdout)["Test"]  # fmt: skip
    assert test[0] == "CMD"
    unused = str(free_port())
    refused = podman("exec", "-e", f"HEALTHCHECK_PORT={unused}", api.name, *test[1:], check=False)
    assert refused.returncode != 0 and "Connection refused" in refused.stderr, refused.stderr
    assert podman("exec", api.name, "id", "-u").stdout.strip() == UID


def test_a_container_separates_with_the_baked_model_and_no_network(
    image: Built, make_audio: MakeAudio, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o777)  # the container's user is not the test's
    make_audio("song.wav", seconds=2.0).rename(work / "song.wav")
    done = podman(
        "run", "--rm", "--network=none", *READ_ONLY, "-v", f"{work}:/work", image.image,
        "separate", "-n", image.model, "--shifts", "0", "-o", "/work/out", "/work/song.wav",
        timeout=300,
    )  # fmt: skip
    stems = sorted(p.name for p in (work / "out" / image.model / "song").iterdir())
    assert stems == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"], done.stdout


def stack_env(
    image: Built, postgres_url: str, redis_url: str, redis_prefix: str, s3: Any, tmp: Path
) -> dict[str, str]:
    return {
        **boto3_env(s3.server, tmp),
        "STEMIFY_DEFAULT_MODEL": image.model,
        "STEMIFY_DATABASE_URL": postgres_url,
        "STEMIFY_REDIS_URL": redis_url,
        "STEMIFY_REDIS_PREFIX": redis_prefix,
        "STEMIFY_STORAGE_URL": f"s3://{s3.name}/stemify",
        "STEMIFY_SECRET_KEY": "container-test-secret",
        "STEMIFY_HEARTBEAT_INTERVAL_S": "0.5",
        "STEMIFY_HEARTBEAT_TIMEOUT_S": "3",
        "STEMIFY_RECONCILE_INTERVAL_S": "1",
        "STEMIFY_REQUEUE_AFTER_S": "2",
    }


@dataclass(frozen=True)
class Stack:
    """The API container over the machine's Redis and PostgreSQL and SeaweedFS."""

    image: Built
    containers: list[Container]
    env: dict[str, str]
    base: str
    s3: Any

    def worker(self, **env: str) -> Container:
        worker = Container(self.image.image, "worker", env={**self.env, **env})
        self.containers.append(worker)
        return worker


@pytest.fixture
def stack(
    image: Built,
    containers: list[Container],
    postgres_url: str,
    redis_url: str,
    redis_prefix: str,
    s3: Any,
    tmp_path: Path,
) -> Stack:
    env = stack_env(image, postgres_url, redis_url, redis_prefix, s3, tmp_path)
    _, base = api_container(image, containers, env)
    return Stack(image, containers, env, base, s3)


def test_api_and_worker_containers_process_an_upload_end_to_end(
    stack: Stack, make_audio: MakeAudio
) -> None:
    stack.worker()
    base, s3 = stack.base, stack.s3
    api = client(base)
    job = wait_for(
        api, submit(api, make_audio("song.wav", seconds=3.0), shifts="0")["id"], timeout=240
    )
    assert job["status"] == "succeeded", job
    assert job["model"] == stack.image.model
    for stem in job["stems"]:
        url = stem["url"] if stem["url"].startswith("http") else f"{base}{stem['url']}"
        got = httpx.get(url, follow_redirects=True, timeout=60)
        assert got.status_code == 200, got.text
        key = f"stemify/jobs/{job['id']}/stems/{stem['name']}.wav"
        assert got.content == s3.client.get_object(Bucket=s3.name, Key=key)["Body"].read()
        assert len(got.content) == stem["size"]


def test_sigterm_on_a_worker_container_hands_its_running_job_back(
    stack: Stack, make_audio: MakeAudio
) -> None:
    # A short grace: the job must still be running when it ends (the onnx backend could finish
    # it within the default 30 s, and then there is nothing to hand back).
    worker = stack.worker(STEMIFY_SHUTDOWN_GRACE_S="1")
    api = client(stack.base)
    job = submit(api, make_audio("long.wav", seconds=20.0), shifts="4")
    wait_for(api, job["id"], lambda j: j["status"] == "running" and j["progress"] > 3, 240)
    podman("kill", "--signal", str(int(signal.SIGTERM)), worker.name)
    assert worker.wait(90) == 0, worker.logs()
    assert "handed back" in worker.logs()
    # Another process's change: the API shows it within STEMIFY_JOB_CACHE_S.
    assert wait_for(api, job["id"], lambda j: j["status"] == "queued", 5)["status"] == "queued"
