"""Where a job's objects live in storage: everything of job ``<id>`` under ``jobs/<id>/``, so
deleting the job's prefix deletes all of it. Names from uploads and links never reach a key."""

from __future__ import annotations


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


def input_key(job_id: str) -> str:
    return f"jobs/{job_id}/input"


def stems_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/stems/"


def stem_key(job_id: str, file_name: str) -> str:
    """``file_name`` is the engine's own (``vocals.wav``), never a caller's."""
    return f"{stems_prefix(job_id)}{file_name}"
