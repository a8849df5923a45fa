"""What every command shares: settings, the model directory option, one-line errors."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from stemify.errors import StemifyError
from stemify.redaction import redact_url
from stemify.settings import Settings

if TYPE_CHECKING:
    from stemify.observability.metrics import Metrics
    from stemify.services import Services

F = TypeVar("F", bound=Callable[..., Any])


def model_dir_option(command: F) -> F:
    return click.option(
        "--model-dir",
        type=click.Path(path_type=Path, file_okay=False),
        help="Model directory (default: STEMIFY_MODEL_DIR or the user cache).",
    )(command)


def clip_mode_option(help_text: str) -> Callable[[F], F]:
    return click.option(
        "--clip-mode",
        type=click.Choice(["rescale", "clamp", "none"]),
        default="rescale",
        show_default=True,
        help=help_text,
    )


def settings_from(model_dir: Path | None) -> Settings:
    settings = Settings()
    if model_dir is not None:
        settings = settings.model_copy(update={"model_dir": model_dir})
    return settings


def show_backend_log() -> None:
    """The backends' export lines and warnings on stderr, for commands without a log set-up:
    an export on first load takes a while, and a fallback to torch must be seen."""
    logger = logging.getLogger("stemify.engine.backends")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("stemify: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def fail(message: str) -> NoReturn:
    click.echo(f"stemify: error: {message}", err=True)
    sys.exit(1)


def services_from(settings: Settings, metrics: Metrics | None = None) -> Services:
    from sqlalchemy.exc import OperationalError

    from stemify.services import build_services

    try:
        return build_services(settings, metrics)
    except StemifyError as exc:
        fail(exc.message)
    except OperationalError as exc:
        # One line, and never the URL: it may hold the password.
        reason = str(exc.orig or exc).strip().splitlines()[0]
        fail(f"cannot open the database (STEMIFY_DATABASE_URL): {redact_url(reason)}")
