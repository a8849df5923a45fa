"""The four per-key limits, under one name each: the same in settings (``STEMIFY_...``), the
``stemify keys`` flags, the key table and the ``/usage`` JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stemify.settings import Settings


@dataclass(frozen=True)
class KeyLimits:
    """A key's own limits; None: the setting of the same name. 0 turns a limit off."""

    submissions_per_minute: int | None = None
    reads_per_minute: int | None = None
    max_running_jobs: int | None = None
    daily_audio_minutes: float | None = None


LIMIT_NAMES = tuple(f.name for f in dataclasses.fields(KeyLimits))


@dataclass(frozen=True)
class Limits:
    """Effective limits of one caller (a key's own, else the settings'); 0 means none."""

    submissions_per_minute: int
    reads_per_minute: int
    max_running_jobs: int
    daily_audio_minutes: float

    @classmethod
    def of(cls, settings: Settings, own: KeyLimits | None = None) -> Limits:
        own = own or KeyLimits()
        chosen = {
            name: getattr(settings, name) if getattr(own, name) is None else getattr(own, name)
            for name in LIMIT_NAMES
        }
        return cls(**chosen)

    @classmethod
    def none(cls) -> Limits:
        return cls(0, 0, 0, 0.0)
