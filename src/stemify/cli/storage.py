"""``stemify storage check``: can this deployment's storage do what stemify needs?"""

from __future__ import annotations

import sys

import click

from stemify.settings import Settings


@click.group()
def storage() -> None:
    """Check the storage backend (STEMIFY_STORAGE_URL)."""


@storage.command("check")
def storage_check() -> None:
    """Try every operation stemify uses on a probe object (then removed): for S3, bucket
    access, put, get, head, list, server-side copy, multipart upload and abort, delete; for a
    directory, write, read, link and delete. One line per check; exit status 1 on a failure."""
    from stemify.errors import StemifyError
    from stemify.services import build_storage
    from stemify.storage.checks import storage_checks

    settings = Settings()
    try:
        backend = build_storage(settings)
    except (StemifyError, ValueError) as exc:
        click.echo(f"FAIL  setup      {getattr(exc, 'message', str(exc))}")
        sys.exit(1)
    click.echo(f"checking {getattr(backend, 'url', None) or getattr(backend, 'root', backend)}")
    failed = False
    for result in storage_checks(backend):
        click.echo(f"{'ok  ' if result.ok else 'FAIL'}  {result.name:<10} {result.detail}")
        failed = failed or not result.ok
    if failed:
        click.echo("stemify: error: the storage check failed (the FAIL line says why)", err=True)
        sys.exit(1)
    click.echo("storage ok")
