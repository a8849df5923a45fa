"""``stemify evaluate REF_DIR EST_DIR``: SDR and SI-SDR of estimated stems against references.

``stemify.quality`` (scipy, and torch through fast_bss_eval) is imported when the command runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from stemify.cli.common import fail
from stemify.errors import StemifyError


@click.command()
@click.argument("ref_dir", type=click.Path(path_type=Path))
@click.argument("est_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def evaluate(ref_dir: Path, est_dir: Path, as_json: bool) -> None:
    """Score the stems in EST_DIR against the reference stems in REF_DIR (matched by name)."""
    from stemify.quality import evaluate_dirs

    try:
        result = evaluate_dirs(ref_dir, est_dir)
    except StemifyError as exc:
        fail(exc.message)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(result.format_table())
    for warning in result.warnings:
        click.echo(f"stemify: warning: {warning}", err=True)
