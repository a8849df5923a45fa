"""``stemify config show``: the effective settings, secrets masked."""

from __future__ import annotations

import json

import click

from stemify.redaction import redact_url
from stemify.settings import Settings


@click.group()
def config() -> None:
    """Show the effective settings."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True)
def config_show(as_json: bool) -> None:
    """Every STEMIFY_ setting and its value; secrets are masked."""
    settings = Settings()
    # Secret settings print as "**********"; passwords inside any other URL are masked too.
    values = {
        name: redact_url(value) if isinstance(value, str) else value
        for name, value in json.loads(settings.model_dump_json()).items()
    }
    values["database_url"] = values["database_url"] or "(SQLite in data_dir)"
    if as_json:
        click.echo(json.dumps(values, indent=2))
        return
    for name, value in values.items():
        click.echo(f"STEMIFY_{name.upper()}={'' if value is None else value}")
