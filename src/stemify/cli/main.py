"""Entry point of the ``stemify`` command."""

from __future__ import annotations

import click

from stemify import __version__
from stemify.cli.evaluate import evaluate
from stemify.cli.models import models
from stemify.cli.separate import separate
from stemify.cli.service import config, jobs, keys, serve, worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stemify")
def cli() -> None:
    """stemify: split songs into stems (vocals, drums, bass, other) with Demucs."""


cli.add_command(separate)
cli.add_command(models)
cli.add_command(evaluate)
for command in (serve, worker, jobs, keys, config):
    cli.add_command(command)


def main() -> None:
    cli()
