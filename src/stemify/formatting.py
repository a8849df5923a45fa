"""Numbers in words people read in error messages."""

from __future__ import annotations

from stemify.errors import AudioLimitError


def format_duration(seconds: float) -> str:
    """``3:12:00``, or ``4:05`` under an hour."""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_bytes(n: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


def check_duration(duration_s: float, limit_s: float, subject: str) -> None:
    """Refuse audio longer than the limit: ``the uploaded file is 2:31:00 long; ...``."""
    if duration_s <= limit_s:
        return
    length, limit = format_duration(duration_s), format_duration(limit_s)
    if length == limit:  # over by less than a second
        length, limit = f"{duration_s:.2f} s", f"{limit_s:.2f} s"
    raise AudioLimitError(f"{subject} is {length} long; the limit is {limit}")
