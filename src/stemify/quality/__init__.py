"""Quality of a separation: streaming loudness and level report, and offline SDR evaluation."""

from stemify.quality.evaluate import EvaluationResult, StemScore, evaluate_dirs
from stemify.quality.loudness import LoudnessMeter
from stemify.quality.report import (
    SNR_CAP_DB,
    ConsistencyMeter,
    QualityAccumulator,
    QualityReport,
    StemMeter,
    StemQuality,
)

__all__ = [
    "SNR_CAP_DB",
    "ConsistencyMeter",
    "EvaluationResult",
    "LoudnessMeter",
    "QualityAccumulator",
    "QualityReport",
    "StemMeter",
    "StemQuality",
    "StemScore",
    "evaluate_dirs",
]
