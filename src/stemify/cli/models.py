"""``stemify models list | pull | verify | export``: the local model directory.

Only ``export`` (and ``pull --export``) loads a model; the others import neither torch nor
demucs (``stemify.models`` imports them only to load one, or to read the sources of a local
checkpoint). The download client and the
progress bars are imported by the commands that use them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from stemify.cli.common import fail, model_dir_option, settings_from, show_backend_log
from stemify.errors import StemifyError
from stemify.settings import Settings

if TYPE_CHECKING:
    from tqdm import tqdm


def _size(size: int | None) -> str:
    return "unknown" if size is None else f"{size / 1e6:.0f} MB"


@click.group()
def models() -> None:
    """List, download, verify and export Demucs models."""


@models.command("list")
@model_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(model_dir: Path | None, as_json: bool) -> None:
    """Official and local models, and which are installed."""
    from stemify.models import list_models

    settings = settings_from(model_dir)
    statuses = list_models(settings.model_dir)

    def backend(capable: bool) -> str:
        # What a separation would run it on under STEMIFY_BACKEND (auto falls back to torch
        # only if the export fails its check, with a warning then).
        return "onnx" if capable and settings.backend != "torch" else "torch"

    if as_json:
        rows = [
            {
                "name": s.name,
                "description": s.description,
                "sources": list(s.sources),
                "installed": s.installed,
                "size_bytes": s.size_bytes,
                "official": s.official,
                "backend": backend(s.runtime_capable),
            }
            for s in statuses
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"model directory: {settings.model_dir}")
    click.echo(f"{'NAME':<14} {'INSTALLED':<10} {'SIZE':>9}  {'BACKEND':<8} SOURCES")
    for s in statuses:
        sources = ",".join(s.sources) or "?"
        installed = "yes" if s.installed else "no"
        runs_on = backend(s.runtime_capable)
        click.echo(f"{s.name:<14} {installed:<10} {_size(s.size_bytes):>9}  {runs_on:<8} {sources}")


class _Bars:
    """One download bar per file, on stderr."""

    def __init__(self) -> None:
        self._bars: dict[str, tqdm[Any]] = {}

    def __call__(self, file_name: str, done: int, total: int | None) -> None:
        from tqdm import tqdm

        if file_name not in self._bars:
            self._bars[file_name] = tqdm(
                total=total, desc=file_name, unit="B", unit_scale=True, file=sys.stderr
            )
        bar = self._bars[file_name]
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()


@models.command("pull")
@click.argument("names", nargs=-1, required=True)
@model_dir_option
@click.option("--base-url", help="Download from here (default: STEMIFY_MODEL_BASE_URL).")
@click.option("--export", is_flag=True, help="Then export them for the onnx backend.")
def pull_command(
    names: tuple[str, ...], model_dir: Path | None, base_url: str | None, export: bool
) -> None:
    """Download official models, verify their checksums, resume partial downloads."""
    from stemify.models import pull
    from stemify.models.extra import full_catalogue

    settings = settings_from(model_dir)
    bars = _Bars()
    try:
        catalogue = full_catalogue(settings.model_catalogue)
        url = base_url or settings.model_base_url
        pull(list(names), settings.model_dir, url, catalogue=catalogue, progress=bars)
    except StemifyError as exc:
        bars.close()
        fail(exc.message)
    bars.close()
    click.echo(f"installed {', '.join(names)} in {settings.model_dir}")
    if export:
        _export(names, settings)


@models.command("export")
@click.argument("names", nargs=-1, required=True)
@model_dir_option
def export_command(names: tuple[str, ...], model_dir: Path | None) -> None:
    """Export installed HTDemucs models for the onnx backend, ahead of the first separation
    (into the model directory, or STEMIFY_EXPORT_DIR when it is read-only)."""
    _export(names, settings_from(model_dir))


def _export(names: tuple[str, ...], settings: Settings) -> None:
    import time

    from stemify.engine.backends.choose import load_engine_model

    show_backend_log()
    failed = False
    for name in names:
        started = time.monotonic()
        try:
            loaded = load_engine_model(
                name, settings.model_dir, backend="onnx", export_dir=settings.export_dir
            )
        except StemifyError as exc:
            fail(exc.message)
        seconds = time.monotonic() - started
        if loaded.backend.name != "onnx":
            click.echo(f"{name}: not exported, it runs on torch (see the warning above)", err=True)
            failed = True
            continue
        size = _size(loaded.backend.memory_bytes())
        click.echo(f"{name}: ready for the onnx backend ({size} exported, {seconds:.1f} s)")
    if failed:
        sys.exit(1)


@models.command("verify")
@model_dir_option
def verify_command(model_dir: Path | None) -> None:
    """Re-hash every installed model file; exit 1 if any is corrupt or missing."""
    from stemify.models import verify_models

    settings = settings_from(model_dir)
    results = verify_models(settings.model_dir)
    for r in results:
        click.echo(f"{'ok ' if r.ok else 'BAD'} {r.name:<14} {r.file}: {r.message}")
    if not results:
        click.echo(f"no models installed in {settings.model_dir}")
    if any(not r.ok for r in results):
        sys.exit(1)
