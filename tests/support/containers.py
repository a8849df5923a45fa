"""Images for the container tests, built with Debian's podman and cached between runs.

- the base image: ``debootstrap --variant=minbase bookworm`` from the mirror apt uses here,
  ``podman import``-ed (no registry can be reached), Python from Debian's packages;
- the stemify image: the repository's Dockerfile on that base, with a random-weight model
  baked in from a local model server, tagged by a hash of everything that goes into it.

Run as a script (``python tests/support/containers.py``) it builds both, for `make`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "tests" / "containers" / "containers.conf"
BASE_IMAGE = "localhost/stemify-test-base:bookworm-minbase"
IMAGE_REPO = "localhost/stemify-test"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "stemify-tests"


def pip_setting(name: str, fallback: str) -> Path:
    """A setting of pip's own configuration here (``global.NAME`` of `pip config list`): the
    CA bundle that lets pip reach PyPI, the folder holding the CPU torch wheel. Test-only
    build arguments; the Dockerfile needs neither elsewhere."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60
    )
    found = re.search(rf"^global\.{re.escape(name)}='([^' ]+)", done.stdout, re.M)
    return Path(found[1] if found else fallback)


# What the build context sends (the .dockerignore keeps the rest out): the image tag hashes it.
PIP_CA_FALLBACK = "/etc/ssl/certs/ca-certificates.crt"  # Debian's bundle
BUILD_INPUTS = ("Dockerfile", ".dockerignore", "requirements.lock", "pyproject.toml", "README.md")
TOOLS = ("podman", "runc", "debootstrap")


def env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONF)}


def podman(
    *args: str, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["podman", *args], env=env(), capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        output = f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        raise AssertionError(f"podman {' '.join(args)} failed:\n{output}")
    return result


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def apt_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt uses here: the first bookworm entry of sources.list(.d)."""
    files = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]
    for file in files:
        if not file.is_file():
            continue
        text = file.read_text()
        for stanza in re.split(r"\n\s*\n", text):  # deb822 (.sources)
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and "bookworm" in suites[1].split():
                return uris[1]
        for line in text.splitlines():  # one-line format
            match = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", line)
            if match:
                return match[1]
    raise AssertionError(f"no Debian bookworm mirror in {sources}/sources.list(.d)")


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def base_image(tag: str = BASE_IMAGE) -> str:
    """The debootstrap base image, made once (about a minute) and kept in podman's store."""
    if image_exists(tag):
        return tag
    with tempfile.TemporaryDirectory(prefix="stemify-debootstrap-") as tmp:
        root = Path(tmp) / "root"
        done = subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(root), apt_mirror()],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if done.returncode != 0:
            raise AssertionError(f"debootstrap failed:\n{done.stdout[-3000:]}\n{done.stderr}")
        # debootstrap's downloaded packages and lists: 80 MB of nothing for an image.
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (root / leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        tar = Path(tmp) / "root.tar"
        subprocess.run(["tar", "-C", str(root), "-cf", str(tar), "."], check=True)
        podman("import", "--change", "CMD=/bin/bash", str(tar), tag)
    return tag


@dataclass(frozen=True)
class Release:
    """A random-weight model published as an official one would be: files and a catalogue."""

    directory: Path  # the files, as the model server serves them (url_path -> file)
    catalogue: Path
    name: str


def test_release() -> Release:
    """The model baked into the test image, made once and kept in the cache (so the image's
    hash, which covers the catalogue, stays the same between runs)."""
    import yaml

    from stemify.testing.random_models import SOURCES, TINY_KWARGS, build_htdemucs, save_model

    directory = CACHE / "release"
    catalogue = directory / "catalogue.yaml"
    name = "tinybaked"
    if not catalogue.exists():
        files = directory / "files"
        files.mkdir(parents=True, exist_ok=True)
        weights = save_model(build_htdemucs(12, **TINY_KWARGS), files, "dddd0001")
        data = weights.read_bytes()
        entry = {
            "description": "random weights baked into the test image",
            "sources": SOURCES,
            "files": [
                {
                    "name": weights.name,
                    "url_path": f"files/{weights.name}",
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                }
            ],
        }
        partial = catalogue.with_suffix(".part")
        partial.write_text(yaml.safe_dump({name: entry}))
        partial.rename(catalogue)
    return Release(directory, catalogue, name)


def build_hash(base_id: str, release: Release) -> str:
    digest = hashlib.sha256(base_id.encode())
    paths = [ROOT / p for p in BUILD_INPUTS]
    paths += sorted(p for p in (ROOT / "src").rglob("*") if p.is_file() and _kept(p))
    paths.append(release.catalogue)
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _kept(path: Path) -> bool:
    return "__pycache__" not in path.parts and path.suffix != ".pyc"


@contextmanager
def serving(directory: Path) -> Iterator[str]:
    """``directory`` over HTTP on 127.0.0.1 (the build's network is the host's)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from support.model_server import ModelServer

    files = {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }
    server = ModelServer(files)
    try:
        yield server.base_url
    finally:
        server.close()


@dataclass(frozen=True)
class Built:
    image: str
    model: str  # the baked model's name
    seconds: float  # build time; 0 when the cached image was used


def stemify_image() -> Built:
    """The repository's Dockerfile built on the base image, or the cached build of the same
    inputs."""
    base = base_image()
    base_id = podman("image", "inspect", "--format", "{{.Id}}", base).stdout.strip()
    release = test_release()
    image = f"{IMAGE_REPO}:{build_hash(base_id, release)}"
    if image_exists(image):
        return Built(image, release.name, 0.0)
    return build(image, base, release)


def build(image: str, base: str, release: Release, *extra: str, context: Path = ROOT) -> Built:
    """``podman build`` of ``context``'s Dockerfile as ``image`` with the test-only build
    arguments (``extra``: more podman options, e.g. ``--no-cache``)."""
    started = time.monotonic()
    with serving(release.directory) as url:
        podman(
            "build", "--format", "docker", "--network", "host", "--layers", *extra,
            "-v", f"{pip_setting('cert', PIP_CA_FALLBACK)}:/run/build/ca.crt:ro",
            "-v", f"{pip_setting('find-links', '/opt/wheels')}:/run/build/wheels:ro",
            "-v", f"{release.directory}:/run/build/release:ro",
            "--build-arg", f"BASE_IMAGE={base}",
            "--build-arg", "PIP_CERT=/run/build/ca.crt",
            "--build-arg", "PIP_FIND_LINKS=/run/build/wheels",
            "--build-arg", "TORCH_INDEX_URL=",
            "--build-arg", f"MODELS={release.name}",
            "--build-arg", f"MODELS_BASE_URL={url}",
            "--build-arg", "MODEL_CATALOGUE=/run/build/release/catalogue.yaml",
            "-t", image, "-f", str(context / "Dockerfile"), str(context),
            timeout=1800,
        )  # fmt: skip
    return Built(image, release.name, time.monotonic() - started)


def wait_answering(url: str, timeout: float, alive: Callable[[], bool] = lambda: True) -> bool:
    """Whether ``url`` answered 200 within ``timeout`` (False at once when not ``alive``)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


# As the Kubernetes manifests run it (readOnlyRootFilesystem, an emptyDir for the data dir):
# the image must work with nothing writable but its data dir and /tmp. An anonymous volume,
# not a tmpfs: podman 4.3 makes a --tmpfs root's 0755 whatever its mode says.
READ_ONLY = ("--read-only", "-v", "/var/lib/stemify")


class Container:
    """One detached container of the test image, removed by ``remove``."""

    def __init__(
        self,
        image: str,
        *args: str,
        env: dict[str, str] | None = None,
        network: str = "host",
        volumes: tuple[str, ...] = (),
    ) -> None:
        self.name = f"stemify-test-{uuid.uuid4().hex[:10]}"
        options = ["--name", self.name, "--network", network, *READ_ONLY]
        for key, value in (env or {}).items():
            options += ["-e", f"{key}={value}"]
        for volume in volumes:
            options += ["-v", volume]
        podman("run", "-d", *options, image, *args)

    def logs(self) -> str:
        done = podman("logs", self.name, check=False)
        return done.stdout + done.stderr

    def running(self) -> bool:
        state = podman("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return state.stdout.strip() == "true"

    def wait(self, timeout: float) -> int:
        """The exit code, once the container stopped."""
        return int(podman("wait", self.name, timeout=timeout).stdout.strip())

    def remove(self) -> None:
        podman("rm", "-f", "-v", "-t", "5", self.name, check=False)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    built = stemify_image()
    print(f"{built.image} (model {built.model}; built in {built.seconds:.0f} s)")
