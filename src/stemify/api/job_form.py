"""The fields of the job submission form, derived from :class:`~stemify.jobs.model.JobSpec`
(plus the input and the webhook), their OpenAPI schema, and their validation into a spec.

Options are validated once the whole form has been read (:func:`build_spec`); the check made
when the file part starts (:func:`check_fields_so_far`) judges only the fields sent before it,
so ``-F file=@song.mp3 -F model=X`` is judged by X, not by the default model."""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from stemify.egress.urlguard import URLPolicy, check_submitted_url
from stemify.engine import output_stems
from stemify.engine.params import invalid_option
from stemify.errors import InvalidURLError, ModelNotFoundError
from stemify.jobs.model import JobSpec
from stemify.models import ModelStatus, list_models

FILE_FIELD = "file"
URL_FIELD = "url"
# The origin document's name for a link; the same field.
URL_ALIASES = ("youtube_url",)
WEBHOOK_FIELD = "webhook_url"
OPTION_FIELDS = tuple(JobSpec.model_fields)
TEXT_FIELDS = frozenset({URL_FIELD, *URL_ALIASES, WEBHOOK_FIELD, *OPTION_FIELDS})
MAX_URL_CHARS = 2048


def _option_schema(name: str) -> dict[str, Any]:
    """A form field carries text: the option's own JSON schema, with null and tuples (a comma
    list in the form) dropped."""
    schema = dict(JobSpec.model_json_schema()["properties"][name])
    variants = [s for s in schema.pop("anyOf", [schema]) if s.get("type") != "null"]
    field = {**variants[0], **{k: v for k, v in schema.items() if k not in ("title",)}}
    field.pop("title", None)
    if field.get("type") == "array":
        field = {"type": "string", "description": field.get("description", "")}
    if name == "model":
        field.pop("default", None)  # the server's default model, which the schema cannot know
    return field


FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        FILE_FIELD: {
            "type": "string",
            "format": "binary",
            "description": "The audio (or video) file. Send either file or url.",
        },
        URL_FIELD: {"type": "string", "description": "An http(s) link the worker downloads."},
        **{
            alias: {"type": "string", "description": f"The same as {URL_FIELD}."}
            for alias in URL_ALIASES
        },
        **{name: _option_schema(name) for name in OPTION_FIELDS},
        WEBHOOK_FIELD: {"type": "string", "description": "Called (signed) when the job ends."},
    },
}


def source_link(fields: dict[str, str]) -> str | None:
    """The link of a link job, under its name or an alias."""
    given = [name for name in (URL_FIELD, *URL_ALIASES) if name in fields]
    if len(given) > 1:
        raise InvalidURLError(f"send one of {', '.join(given)}, not several")
    return fields[given[0]] if given else None


def check_link(value: str, what: str, policy: URLPolicy | None = None) -> str:
    """An http(s) link, checked for shape; with ``policy`` also for where it points (a host
    that does not resolve yet is left to the worker, which checks every connection). Blocking:
    it resolves the host."""
    link = value.strip()
    if not link:
        raise InvalidURLError(f"{what} is empty")
    if len(link) > MAX_URL_CHARS:
        raise InvalidURLError(f"{what} is longer than {MAX_URL_CHARS} characters")
    if any(c.isspace() or unicodedata.category(c)[0] == "C" for c in link):
        raise InvalidURLError(f"{what} contains spaces or control characters")
    try:
        parts = urlsplit(link)
        host = parts.hostname
        _ = parts.port
    except ValueError:
        raise InvalidURLError(f"{what} is not a valid link") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidURLError(f"{what} must be an http:// or https:// link")
    if not host:
        raise InvalidURLError(f"{what} has no host name")
    if policy is not None:
        check_submitted_url(link, policy)
    return link


def _model(name: str, model_dir: Path, arriving: ModelStatus | None) -> ModelStatus:
    models = {m.name: m for m in list_models(model_dir)}
    status = models.get(name)
    if arriving is not None and arriving.name == name and not (status and status.installed):
        return arriving  # being downloaded at start: the job waits for it
    if status is None:
        installed = ", ".join(sorted(m.name for m in models.values() if m.installed)) or "none"
        raise ModelNotFoundError(
            f"unknown model {name!r} (installed: {installed}); official models are installed "
            "on the server with `stemify models pull <name>`"
        )
    if not status.installed:
        hint = (
            f"run `stemify models pull {name}` on the server"
            if status.official
            else "its weight files are missing from the model directory "
            "(`stemify models pull` installs official models only)"
        )
        raise ModelNotFoundError(f"model {name!r} is not installed: {hint}")
    return status


def _spec(fields: dict[str, str], model: str) -> JobSpec:
    values: dict[str, Any] = {}
    for name in OPTION_FIELDS:
        raw = fields.get(name, "").strip()
        if raw:
            values[name] = raw
    if "stems" in fields:
        values["stems"] = tuple(s.strip() for s in fields["stems"].split(",") if s.strip())
    if "output_format" in values:
        values["output_format"] = values["output_format"].lower()
    values["model"] = model
    try:
        return JobSpec.model_validate(values)
    except ValidationError as exc:
        raise invalid_option(exc) from None


def build_spec(
    fields: dict[str, str],
    model_dir: Path,
    default_model: str,
    arriving: ModelStatus | None = None,
) -> JobSpec:
    """The job's parameters from the whole form, checked as the engine will check them
    (blocking: it reads the model directory). ``arriving``: a model still downloading."""
    model = _model(fields.get("model", "").strip() or default_model, model_dir, arriving)
    spec = _spec(fields, model.name)
    options = spec.separation_options(device="cpu", batch_size=1)
    options.inference.validate(None)  # the model matters only for an explicit segment
    if model.sources:
        output_stems(list(model.sources), options)
    return spec


def check_fields_so_far(
    fields: dict[str, str], model_dir: Path, arriving: ModelStatus | None = None
) -> None:
    """Refuse a bad option sent before the file, before the upload is stored; what depends on
    the model is judged only when the model was named (it may follow the file)."""
    if fields.get("model", "").strip():
        build_spec(fields, model_dir, "", arriving)
        return
    _spec(fields, model="")
