"""The command line starts without torch and demucs unless a command loads or measures a model.

Each command runs in a fresh Python process, through the console script's own entry point
(``stemify.cli.main:main`` with ``sys.argv`` set, as ``.venv/bin/stemify`` calls it), against
empty data and model directories; the process then reports whether torch or demucs were
imported and, if so, the chain of stemify frames that imported them first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stemify.models import official_catalogue

pytestmark = pytest.mark.unit

HEAVY = ("torch", "demucs")
_MARK = "@@startup@@"

# Runs in the child: `python -c CHILD ARGS...` behaves as `stemify ARGS...`, and records who
# asks for torch or demucs first (a meta path finder sees every top-level import request).
CHILD = f"""
import json, os, sys, traceback
from importlib.abc import MetaPathFinder

HEAVY = {HEAVY!r}
first = {{}}
marker = os.sep + "stemify" + os.sep


class Watch(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name not in HEAVY or name in first:
            return None
        stack = traceback.extract_stack()
        # importlib.util.find_spec only locates a package (the catalogue finds demucs' data).
        util = ("importlib" in f.filename and "util" in f.filename for f in stack)
        if not any(util):
            first[name] = [
                f"{{frame.filename.rsplit(marker, 1)[1]}}:{{frame.name}}"
                for frame in stack
                if marker in frame.filename
            ]
        return None


sys.meta_path.insert(0, Watch())
from stemify.cli.main import main

sys.argv = ["stemify", *sys.argv[1:]]
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
sys.stdout.flush()
imported = {{name: name in sys.modules for name in HEAVY}}
print("\\n{_MARK}" + json.dumps({{"exit": code, "imported": imported, "by": first}}))
"""


def _env(data_dir: Path, model_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEMIFY_")}
    env["STEMIFY_DATA_DIR"] = str(data_dir)
    env["STEMIFY_MODEL_DIR"] = str(model_dir)
    return env


def run_cli(args: list[str], data_dir: Path, model_dir: Path) -> tuple[str, dict[str, Any]]:
    """``stemify ARGS`` in a fresh process: its output, and the child's import report."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        capture_output=True,
        text=True,
        env=_env(data_dir, model_dir),
        timeout=120,
    )
    output, marker, report = done.stdout.rpartition(_MARK)
    assert marker, f"stemify {' '.join(args)} did not finish: {done.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(report)
    assert result["exit"] == 0, f"stemify {' '.join(args)}: {done.stderr[-2000:]}"
    return output, result


def _heavy_imports(result: dict[str, Any]) -> dict[str, list[str]]:
    """The heavy modules the child imported, each with the stemify frames that asked first."""
    return {name: result["by"].get(name, []) for name in HEAVY if result["imported"][name]}


# The commands of the issue, and some help pages; each with something its output must show.
TORCH_FREE = [
    (["--help"], "separate"),
    (["models", "list"], "htdemucs"),
    (["models", "list", "--json"], '"installed": false'),
    (["config", "show"], "STEMIFY_DATA_DIR="),
    (["separate", "--help"], "--two-stems"),
    (["models", "pull", "--help"], "--base-url"),
    (["evaluate", "--help"], "REF_DIR"),
    (["mix", "--help"], "STEM=GAIN"),
    (["jobs", "--help"], "retry"),
    (["jobs", "list", "--help"], "succeeded"),
    (["keys", "--help"], "revoke"),
    (["serve", "--help"], "--port"),
]

STORE_COMMANDS = [(["jobs", "list"], "ID "), (["keys", "list"], "PREFIX ")]


def test_importing_the_entry_module_does_not_import_torch(tmp_path: Path) -> None:
    probe = (
        "import sys, stemify.cli.main; print(sorted(m for m in sys.argv[1:] if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *HEAVY],
        capture_output=True,
        text=True,
        env=_env(tmp_path / "data", tmp_path / "models"),
        timeout=120,
        check=True,
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(("args", "shown"), TORCH_FREE, ids=[" ".join(a) for a, _ in TORCH_FREE])
def test_command_starts_without_torch(tmp_path: Path, args: list[str], shown: str) -> None:
    output, result = run_cli(args, tmp_path / "data", tmp_path / "models")
    assert shown in output
    assert _heavy_imports(result) == {}


@pytest.mark.parametrize(
    ("args", "shown"), STORE_COMMANDS, ids=[" ".join(a) for a, _ in STORE_COMMANDS]
)
def test_store_command_startup(tmp_path: Path, args: list[str], shown: str) -> None:
    """The operators' commands reach the store without torch or demucs."""
    output, result = run_cli(args, tmp_path / "data", tmp_path / "models")
    assert output.startswith(shown)  # the table's header: the store answered
    assert _heavy_imports(result) == {}


def test_official_models_are_listed_without_torch(tmp_path: Path) -> None:
    """An installed official model is recognised from its files; no checkpoint is opened."""
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    entry = official_catalogue()["htdemucs"]
    (model_dir / "htdemucs.yaml").write_text(entry.bag_yaml)
    for file in entry.files:
        (model_dir / file.name).write_bytes(b"not read by `models list`")
    output, result = run_cli(["models", "list", "--json"], tmp_path / "data", model_dir)
    rows = {row["name"]: row for row in json.loads(output)}
    assert rows["htdemucs"]["installed"] is True
    assert rows["htdemucs"]["sources"] == list(entry.sources)
    assert _heavy_imports(result) == {}


def test_local_models_still_list_their_sources(tmp_path: Path, model_dir: Path) -> None:
    """A local bag's sources come from its checkpoint: that read, and only it, imports torch."""
    output, result = run_cli(["models", "list", "--json"], tmp_path / "data", model_dir)
    rows = {row["name"]: row for row in json.loads(output)}
    assert rows["tiny"]["sources"] == ["drums", "bass", "other", "vocals"]
    assert rows["tiny6"]["sources"] == ["drums", "bass", "other", "vocals", "guitar", "piano"]
    # torch for torch.load, demucs for the pickle's classes: both asked for by that read.
    heavy = _heavy_imports(result)
    assert set(heavy) == set(HEAVY)
    for chain in heavy.values():
        assert chain[-1] == "models/catalogue.py:_checkpoint_sources", chain


def test_job_statuses_written_out_for_the_cli_match_the_job_model() -> None:
    from stemify.cli.jobs import JOB_STATUSES
    from stemify.jobs.model import JobStatus

    assert tuple(status.value for status in JobStatus) == JOB_STATUSES


def test_catalogue_reads_demucs_remote_files_as_demucs_does() -> None:
    from demucs.pretrained import REMOTE_ROOT, ROOT_URL, _parse_remote_files

    from stemify.models.catalogue import demucs_remote_dir, parse_remote_files
    from stemify.settings import DEMUCS_ROOT_URL

    assert demucs_remote_dir() == REMOTE_ROOT
    assert DEMUCS_ROOT_URL == ROOT_URL
    ours = parse_remote_files((REMOTE_ROOT / "files.txt").read_text())
    assert {sig: ROOT_URL + path for sig, path in ours.items()} == _parse_remote_files(
        REMOTE_ROOT / "files.txt"
    )
