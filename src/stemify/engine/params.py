"""The separation options a caller chooses, declared once with their defaults and bounds.

:class:`SeparationParams` is the single source: the job's spec extends it, the API form and
its OpenAPI schema are derived from it, the command line takes its defaults and help from it,
and the engine checks its own options against the same bounds (:func:`bounds`)."""

from __future__ import annotations

from typing import Any, Literal

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stemify.audio import OutputFormat
from stemify.errors import InvalidOptionError


class SeparationParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    stems: tuple[str, ...] | None = Field(
        default=None, description="Only these stems, comma separated (e.g. vocals,drums)."
    )
    two_stems: str | None = Field(
        default=None, description="Only STEM and no_STEM, the sum of the others (e.g. vocals)."
    )
    output_format: Literal["wav", "flac", "mp3"] = Field(
        default="wav", description="Container of the stems."
    )
    bit_depth: int = Field(
        default=16, description="wav: 16, 24 or 32 (32-bit float); flac: 16 or 24."
    )
    mp3_bitrate: int = Field(
        default=320, description="mp3 kbps: 96, 112, 128, 160, 192, 224, 256 or 320."
    )
    shifts: int = Field(
        default=1,
        ge=0,
        le=10,
        description="Random time shifts averaged; N times slower, a little better.",
    )
    overlap: float = Field(
        default=0.25, ge=0.0, le=0.99, allow_inf_nan=False, description="Segment overlap."
    )

    @model_validator(mode="after")
    def _consistent(self) -> SeparationParams:
        self.output().validate()
        if self.stems is not None and not self.stems:
            raise InvalidOptionError("stems is empty: give stem names separated by commas")
        if self.stems is not None and self.two_stems is not None:
            raise InvalidOptionError("choose either two-stem mode or a subset of stems, not both")
        return self

    def output(self) -> OutputFormat:
        return OutputFormat(
            container=self.output_format, bit_depth=self.bit_depth, mp3_bitrate=self.mp3_bitrate
        )


def default_of(name: str) -> Any:
    return SeparationParams.model_fields[name].default


def help_of(name: str) -> str:
    return SeparationParams.model_fields[name].description or ""


def bounds(name: str) -> tuple[float, float]:
    """The inclusive ``(low, high)`` bounds declared for a numeric option."""
    low, high = float("-inf"), float("inf")
    for rule in SeparationParams.model_fields[name].metadata:
        if isinstance(rule, annotated_types.Ge):
            low = float(rule.ge)  # type: ignore[arg-type]
        elif isinstance(rule, annotated_types.Le):
            high = float(rule.le)  # type: ignore[arg-type]
    return low, high


def check_bounds(name: str, value: float) -> None:
    low, high = bounds(name)
    if not low <= value <= high:
        raise InvalidOptionError(f"{name} must be between {low:g} and {high:g}, got {value:g}")


def invalid_option(error: ValidationError) -> InvalidOptionError:
    """Pydantic's errors as one line naming each field and what it was given:
    ``shifts: Input should be less than or equal to 10, got '11'``."""
    reasons = []
    for detail in error.errors(include_url=False):
        where = ".".join(str(part) for part in detail["loc"])
        reason = f"{where}: {detail['msg']}" if where else detail["msg"]
        reasons.append(f"{reason}, got {detail['input']!r}" if where else reason)
    return InvalidOptionError("; ".join(reasons))
