"""The one mapping between the :class:`Job` dataclass and its row of the jobs table: every Job
field is a column of the same name, converted (to the row, from the row) where the types
differ. The store reads and writes jobs only through it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from sqlalchemy import bindparam, select

from stemify.db.schema import JobRow
from stemify.jobs.model import Job, JobSpec, JobStatus, Stage, StemFile


def stems_json(stems: dict[str, StemFile]) -> dict[str, Any]:
    return {name: {"key": s.key, "size": s.size} for name, s in stems.items()}


def _stems_of(data: dict[str, Any] | None) -> dict[str, StemFile]:
    return {name: StemFile(name, s["key"], s["size"]) for name, s in (data or {}).items()}


# The one mapping between the Job dataclass and its row: every Job field is a column of the
# same name, converted by (to the row, from the row) where the types differ.
_CONVERTERS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "owner": (lambda owner: owner or "", lambda owner: owner or None),
    "status": (lambda status: status.value, JobStatus),
    "stage": (lambda stage: stage.value if stage else None, lambda v: Stage(v) if v else None),
    "spec": (lambda spec: spec.to_dict(), JobSpec.from_dict),
    "stems": (stems_json, _stems_of),
    "stage_seconds": (dict, lambda value: dict(value or {})),
}
_SAME = (lambda value: value, lambda value: value)
_FIELDS = [field.name for field in dataclasses.fields(Job)]


def row_values(job: Job) -> dict[str, Any]:
    return {name: _CONVERTERS.get(name, _SAME)[0](getattr(job, name)) for name in _FIELDS}


_FROM_ROW = [(name, _CONVERTERS.get(name, _SAME)[1]) for name in _FIELDS]


def job_of(values: dict[str, Any]) -> Job:
    return Job(**{name: convert(values[name]) for name, convert in _FROM_ROW})


def to_job(row: JobRow) -> Job:
    return job_of({name: getattr(row, name) for name in _FIELDS})


_TABLE = JobRow.__table__
# A job by id (status polling reads it through FastQuery).
BY_ID = select(*(_TABLE.c[name] for name in _FIELDS)).where(_TABLE.c.id == bindparam("job_id"))
