"""``stemify evaluate REF_DIR EST_DIR``: score estimated stems against reference stems.

Files are paired by stem name (``vocals.wav`` with ``vocals.flac``), decoded with ffmpeg to
float32 stereo at 44.1 kHz and trimmed to the shorter of the two. Per stem and channel:

* SDR: ``fast_bss_eval.sdr`` with its default 512-tap distortion filter, each channel scored
  on its own as a single source. This is the BSS Eval v4 (museval) SDR of one source, which
  forgives a short linear filter of the reference; it is not the filter-free "SDR" of the
  MDX challenges.
* SI-SDR: ``fast_bss_eval.si_sdr`` (scale-invariant SDR, Le Roux et al. 2019).

Both are averaged over channels in dB. A channel whose reference is digitally silent has no
defined score and is left out; a stem with no scorable channel gets None and a warning.

The whole track is scored at once, not in frames: museval's published SiSEC figures are
medians over 1 s frames and are not directly comparable. fast_bss_eval computes its
correlations with FFTs spanning the whole track, so memory grows with length: about 1 GB on
top of the decoded audio for a 3-minute track (channels are scored one at a time to keep it
there). This is an offline tool, not the streaming path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from stemify.audio import decode_blocks
from stemify.audio.stem_files import stem_files
from stemify.errors import InvalidOptionError

SAMPLERATE = 44100
CHANNELS = 2
SDR_FILTER_LENGTH = 512  # fast_bss_eval's default, stated here so reports can name it
# Identical files have an infinite SDR; capping keeps every score finite for JSON.
SCORE_CAP_DB = 100.0
LENGTH_TOLERANCE_SECONDS = 0.1
MIN_SECONDS = 1.0


@dataclass(frozen=True)
class StemScore:
    sdr_db: float | None  # None when the reference is silent
    si_sdr_db: float | None


@dataclass(frozen=True)
class EvaluationResult:
    stems: dict[str, StemScore]
    mean_sdr_db: float | None  # mean over stems that have a score
    mean_si_sdr_db: float | None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stems": {
                name: {"sdr_db": _rounded(s.sdr_db), "si_sdr_db": _rounded(s.si_sdr_db)}
                for name, s in self.stems.items()
            },
            "mean_sdr_db": _rounded(self.mean_sdr_db),
            "mean_si_sdr_db": _rounded(self.mean_si_sdr_db),
            "sdr": f"fast_bss_eval.sdr, {SDR_FILTER_LENGTH}-tap filter, mean over channels",
            "warnings": list(self.warnings),
        }

    def format_table(self) -> str:
        rows = [("stem", "SDR (dB)", "SI-SDR (dB)")]
        rows += [(name, _cell(s.sdr_db), _cell(s.si_sdr_db)) for name, s in self.stems.items()]
        rows.append(("mean", _cell(self.mean_sdr_db), _cell(self.mean_si_sdr_db)))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = [
            f"{name:<{widths[0]}}  {sdr:>{widths[1]}}  {si_sdr:>{widths[2]}}"
            for name, sdr, si_sdr in rows
        ]
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
        return "\n".join(lines)


def _rounded(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 2)


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _decode(path: Path) -> npt.NDArray[np.float32]:
    """Decode a whole file to float32 ``(2, n)`` at 44.1 kHz (evaluation scores whole tracks)."""
    blocks = list(decode_blocks(path, samplerate=SAMPLERATE, channels=CHANNELS))
    return np.concatenate(blocks, axis=1)


def _score(
    reference: npt.NDArray[np.float32], estimate: npt.NDArray[np.float32]
) -> tuple[float | None, float | None]:
    """Mean SDR and SI-SDR over the channels whose reference is not silent."""
    # Imported here because fast_bss_eval imports torch, which the rest of stemify.quality
    # (used by the engine and the API) should not pay for.
    import fast_bss_eval

    sdrs: list[float] = []
    si_sdrs: list[float] = []
    for channel in range(reference.shape[0]):
        if not np.any(reference[channel]):
            continue
        # Shape (1, 1, n): one channel scored as a single source, so it is never credited with
        # another channel's reference. One channel at a time halves the peak memory (the FFTs
        # span the whole track); float64 keeps identical files at the cap, not at float32 noise.
        ref = reference[channel].astype(np.float64)[None, None, :]
        est = estimate[channel].astype(np.float64)[None, None, :]
        sdr = fast_bss_eval.sdr(ref, est, filter_length=SDR_FILTER_LENGTH, clamp_db=SCORE_CAP_DB)
        sdrs.append(float(sdr[0, 0]))
        si_sdrs.append(float(fast_bss_eval.si_sdr(ref, est, clamp_db=SCORE_CAP_DB)[0, 0]))
    if not sdrs:
        return None, None
    return sum(sdrs) / len(sdrs), sum(si_sdrs) / len(si_sdrs)


def evaluate_dirs(ref_dir: Path, est_dir: Path) -> EvaluationResult:
    references = stem_files(ref_dir, "reference")
    estimates = stem_files(est_dir, "estimate")
    common = sorted(references.keys() & estimates.keys())
    if not common:
        raise InvalidOptionError(
            f"no stem names in common between {ref_dir} ({', '.join(sorted(references))}) "
            f"and {est_dir} ({', '.join(sorted(estimates))})"
        )
    warnings: list[str] = []
    only_ref = sorted(references.keys() - estimates.keys())
    only_est = sorted(estimates.keys() - references.keys())
    if only_ref:
        warnings.append(f"no estimate for reference stems: {', '.join(only_ref)}")
    if only_est:
        warnings.append(f"no reference for estimated stems: {', '.join(only_est)}")

    stems: dict[str, StemScore] = {}
    for name in common:
        reference = _decode(references[name])
        estimate = _decode(estimates[name])
        length = min(reference.shape[1], estimate.shape[1])
        difference = abs(reference.shape[1] - estimate.shape[1]) / SAMPLERATE
        if difference > LENGTH_TOLERANCE_SECONDS:
            warnings.append(
                f"{name}: reference and estimate lengths differ by {difference:.2f} s; "
                f"scored the first {length / SAMPLERATE:.2f} s"
            )
        if length < MIN_SECONDS * SAMPLERATE:
            # With fewer samples than a few filter lengths the distortion filter can fit
            # anything and the SDR is meaninglessly high.
            warnings.append(
                f"{name}: only {length / SAMPLERATE:.2f} s to compare, need {MIN_SECONDS:g} s; "
                "no score"
            )
            sdr, si_sdr = None, None
        else:
            sdr, si_sdr = _score(reference[:, :length], estimate[:, :length])
            if sdr is None:
                warnings.append(f"{name}: reference is silent, no score")
        stems[name] = StemScore(sdr_db=sdr, si_sdr_db=si_sdr)

    return EvaluationResult(
        stems=stems,
        mean_sdr_db=_mean([s.sdr_db for s in stems.values()]),
        mean_si_sdr_db=_mean([s.si_sdr_db for s in stems.values()]),
        warnings=warnings,
    )
