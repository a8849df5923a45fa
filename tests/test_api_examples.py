"""Every fenced sh and python example of docs/api-examples.md, run as written against a live
`stemify serve` with API keys required, links served from 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.processes import Cluster, FileServer, embedded_env

pytestmark = pytest.mark.service

MakeAudio = Callable[..., Path]
DOC = Path(__file__).resolve().parent.parent / "docs" / "api-examples.md"
STEMS = {"drums", "bass", "other", "vocals"}
# A "## heading" line, or a fenced block with its language.
_BLOCKS = re.compile(
    r"^## (?P<h>[^\n]+)$|^```(?P<lang>\w*)\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL
)


@dataclass(frozen=True)
class Example:
    section: str
    language: str
    code: str

    @property
    def name(self) -> str:
        return f"{self.section} ({self.language})"


def examples() -> list[Example]:
    found: list[Example] = []
    section = ""
    for match in _BLOCKS.finditer(DOC.read_text()):
        if match["h"]:
            section = match["h"].strip()
        elif match["lang"] in ("sh", "python"):
            found.append(Example(section, match["lang"], match["code"]))
    return found


def check_upload(out: str, cwd: Path) -> None:
    last = out.strip().splitlines()[-1]
    if last.startswith("{") or out.lstrip().startswith("{"):
        job = json.loads(out)
        assert job["status"] in ("queued", "succeeded") and len(job["id"]) >= 16
    else:
        job_id, status = last.split()
        assert status in ("queued", "succeeded") and len(job_id) >= 16


def check_link(out: str, cwd: Path) -> None:
    if out.lstrip().startswith("{"):
        assert json.loads(out)["source"] == "url"
    else:
        assert re.fullmatch(r"[0-9a-zA-Z_-]{16,}", out.strip()), out


def check_progress(out: str, cwd: Path) -> None:
    lines = out.strip().splitlines()
    assert lines[-1].startswith("succeeded"), out


def check_download(out: str, cwd: Path) -> None:
    if (cwd / "stems.zip").exists():  # the shell example
        assert {p.stem.rsplit("-", 1)[-1] for p in cwd.glob("song-*.wav")} == STEMS
        names = zipfile.ZipFile(cwd / "stems.zip").namelist()
        assert {Path(n).stem for n in names} == STEMS
    else:
        assert {p.stem for p in (cwd / "stems").glob("*.wav")} == STEMS
        for path in (cwd / "stems").glob("*.wav"):
            assert path.read_bytes()[:4] == b"RIFF"


def check_cancel(out: str, cwd: Path) -> None:
    assert out.strip().splitlines()[-1] == "canceled", out


CHECKS: dict[str, Callable[[str, Path], None]] = {
    "Upload a file": check_upload,
    "Submit a link": check_link,
    "Follow progress (Server-Sent Events)": check_progress,
    "Wait and download the stems": check_download,
    "Cancel a job": check_cancel,
}


def test_every_section_has_both_languages_and_a_check() -> None:
    found = {(e.section, e.language) for e in examples()}
    assert found == {(s, lang) for s in CHECKS for lang in ("sh", "python")}


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path
) -> Iterator[tuple[Cluster, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("api-examples")
    cluster = Cluster(
        tmp,
        embedded_env(
            tmp,
            model_dir,
            {
                "STEMIFY_AUTH": "required",
                "STEMIFY_ALLOW_LOOPBACK_URLS": "1",
                "STEMIFY_SECRET_KEY": "examples-secret",
                # A cancel reaches a running job at its worker's next heartbeat: the jobs of
                # the tiny test models are short, so the examples' cancels must land quickly.
                "STEMIFY_HEARTBEAT_INTERVAL_S": "0.1",
            },
        ),
    )
    song = tmp / "song.wav"
    # Short: the examples wait for several real separations.
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
         "sine=frequency=220:sample_rate=44100:duration=3", "-ac", "2", str(song)],
        check=True,
    )  # fmt: skip
    files = FileServer(song)
    try:
        created = cluster.cli("keys", "create", "--name", "examples")
        assert created.returncode == 0, created.stderr
        cluster.serve()
        env = {
            **os.environ,
            "STEMIFY_URL": cluster.base,
            "STEMIFY_API_KEY": created.stdout.strip(),
            "SONG": str(song),
            "SONG_URL": files.url,
        }
        yield cluster, env
    finally:
        files.close()
        cluster.stop()


@pytest.mark.parametrize("example", examples(), ids=lambda e: e.name)
def test_example_runs(
    example: Example, service: tuple[Cluster, dict[str, str]], tmp_path: Path
) -> None:
    cluster, env = service
    command = (
        ["bash", "-euo", "pipefail", "-c", example.code]
        if example.language == "sh"
        else [sys.executable, "-c", example.code]
    )
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{cluster.logs()[-3000:]}"
    CHECKS[example.section](done.stdout, tmp_path)
