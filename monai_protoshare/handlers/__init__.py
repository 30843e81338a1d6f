"""Ignite handlers that react to an engine's state: checkpoints, metrics, predictions, evidence, evaluation report."""

from .checkpoint import TrainingCheckpointHandler
from .evaluation_report import EvaluationReportHandler
from .evidence_export import EvidenceExportHandler
from .metric_handlers import ActivationPrecision, BalancedAccuracy, ExpectedCalibrationError, IncrementalDeletion
from .predictions_writer import PredictionsWriter
from .progress_bar import ProgressBar

__all__ = [
    "ActivationPrecision",
    "BalancedAccuracy",
    "EvaluationReportHandler",
    "EvidenceExportHandler",
    "ExpectedCalibrationError",
    "IncrementalDeletion",
    "PredictionsWriter",
    "ProgressBar",
    "TrainingCheckpointHandler",
]
