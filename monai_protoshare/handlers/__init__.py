"""Ignite handlers that react to an engine's state: checkpoints, metrics, predictions, evidence, segmentation export,
evaluation report."""

from .checkpoint import TrainingCheckpointHandler
from .evaluation_report import EvaluationReportHandler
from .evidence_export import EvidenceExportHandler
from .metric_handlers import ActivationPrecision, BalancedAccuracy, ExpectedCalibrationError, IncrementalDeletion
from .predictions_writer import PredictionsWriter
from .progress_bar import ProgressBar
from .segmentation_export import SegmentationExportHandler

__all__ = [
    "ActivationPrecision",
    "BalancedAccuracy",
    "EvaluationReportHandler",
    "EvidenceExportHandler",
    "ExpectedCalibrationError",
    "IncrementalDeletion",
    "PredictionsWriter",
    "ProgressBar",
    "SegmentationExportHandler",
    "TrainingCheckpointHandler",
]
