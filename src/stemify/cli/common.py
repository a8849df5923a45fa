"""What every command shares: settings, the model directory option, one-line errors."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from stemify.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def model_dir_option(command: F) -> F:
    return click.option(
        "--model-dir",
        type=click.Path(path_type=Path, file_okay=False),
        help="Model directory (default: STEMIFY_MODEL_DIR or the user cache).",
    )(command)


def settings_from(model_dir: Path | None) -> Settings:
    settings = Settings()
    if model_dir is not None:
        settings = settings.model_copy(update={"model_dir": model_dir})
    return settings


def fail(message: str) -> NoReturn:
    click.echo(f"stemify: error: {message}", err=True)
    sys.exit(1)
