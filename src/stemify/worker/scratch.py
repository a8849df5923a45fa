"""A job's scratch directory (input copy, stems before storing) and the removal of those a
killed worker left behind: a SIGKILL or the OOM killer runs no ``finally``."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

_PREFIX = "stemify-job-"


def scratch_prefix(job_id: str) -> str:
    """Names carry the worker's pid, so another process can tell whether their owner lives."""
    return f"{_PREFIX}{os.getpid()}-{job_id}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_orphan_scratch(root: Path | None = None) -> int:
    """Remove the scratch directories of processes that no longer run; how many."""
    removed = 0
    for path in Path(root or tempfile.gettempdir()).glob(f"{_PREFIX}*"):
        pid = path.name.removeprefix(_PREFIX).split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        with contextlib.suppress(FileNotFoundError):  # another worker removed it first
            shutil.rmtree(path)
            removed += 1
    return removed
