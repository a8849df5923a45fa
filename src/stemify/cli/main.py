"""Entry point of the ``stemify`` command."""

from __future__ import annotations

import click
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from stemify import __version__
from stemify.cli.common import fail
from stemify.cli.config import config
from stemify.cli.evaluate import evaluate
from stemify.cli.jobs import jobs
from stemify.cli.keys import keys
from stemify.cli.mix import mix
from stemify.cli.models import models
from stemify.cli.separate import separate
from stemify.cli.serve import serve, worker
from stemify.cli.storage import storage


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stemify")
def cli() -> None:
    """stemify: split songs into stems (vocals, drums, bass, other) with Demucs."""


cli.add_command(separate)
cli.add_command(models)
cli.add_command(evaluate)
cli.add_command(mix)
for command in (serve, worker, jobs, keys, storage, config):
    cli.add_command(command)


def main() -> None:
    try:
        cli()
    except ValidationError as e:  # settings are read inside the commands
        fail("; ".join(_setting_problem(error) for error in e.errors()))


def _setting_problem(error: ErrorDetails) -> str:
    loc = error["loc"]
    name = f"STEMIFY_{str(loc[0]).upper()}" if loc else "a setting"
    # The value itself is not repeated: it may be a secret (a URL with a password).
    return f"invalid {name}: {error['msg']}"


if __name__ == "__main__":  # the autoscaler starts its children with `python -m stemify.cli.main`
    main()
