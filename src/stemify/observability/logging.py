"""Logging, configured once at process start: structlog renders every line, the stdlib
``logging`` calls of stemify and its libraries included (structlog's ``ProcessorFormatter``).

JSON in production, readable columns on a terminal. Context bound with :func:`bind` (the
request id in the API, the job id in workers) is on every line logged while it is bound, in
that thread or task.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any, Literal, TextIO

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

from stemify.redaction import Redactor

LogFormat = Literal["auto", "json", "console"]


class _Redact:
    """Mask known secret values and URL passwords wherever they appear in a log line."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._redactor = Redactor(secrets)

    def __call__(self, _logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = self._redactor.clean(value)
        return event


def _renderer(fmt: LogFormat, stream: TextIO) -> Processor:
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    if console:
        return structlog.dev.ConsoleRenderer(colors=stream.isatty())
    return structlog.processors.JSONRenderer()


def _drop_color_message(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    # Uvicorn passes a copy of its message with terminal colour codes as an extra.
    event.pop("color_message", None)
    return event


def configure_logging(
    level: str = "INFO",
    fmt: LogFormat = "auto",
    *,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Route structlog and stdlib logging through one renderer on ``stream`` (stderr)."""
    out = stream if stream is not None else sys.stderr
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    final: list[Processor] = [
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        structlog.processors.format_exc_info,
        _Redact(secrets),
        _renderer(fmt, out),
    ]
    if not isinstance(final[-1], structlog.processors.JSONRenderer):
        final.remove(structlog.processors.format_exc_info)  # the console prints tracebacks
    formatter = structlog.stdlib.ProcessorFormatter(
        # extra={...} of stdlib calls become fields of the line.
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(), _drop_color_message],
        processors=final,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # The S3 client's DEBUG lines are whole requests: signed headers (the access key id in
    # Authorization), presigned URLs, every header of the request being served. Never below INFO.
    for name in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(name).setLevel(max(logging.getLevelName(level), logging.INFO))
    # Uvicorn's own loggers would otherwise print with their own handlers and format.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


@contextmanager
def bound(**values: Any) -> Iterator[None]:
    """Put ``values`` (request_id, job_id) on every line logged inside the block."""
    with structlog.contextvars.bound_contextvars(**values):
        yield


def bind(**values: Any) -> None:
    """Bind ``values`` until the current context ends (a request, a thread)."""
    structlog.contextvars.bind_contextvars(**values)


def current() -> MutableMapping[str, Any]:
    return structlog.contextvars.get_contextvars()
