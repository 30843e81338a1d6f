"""Ignite handlers: training stages, push, checkpoints, reseeding, metrics, evaluation report."""

from .checkpoint import TrainingCheckpointHandler
from .epoch_reseed import EpochReseedHandler
from .evaluation_report import EvaluationReportHandler
from .evidence_export import EvidenceExportHandler
from .metric_handlers import ActivationPrecision, BalancedAccuracy, ExpectedCalibrationError, IncrementalDeletion
from .predictions_writer import PredictionsWriter
from .progress_bar import ProgressBar
from .push import PrototypePushHandler, push_prototypes
from .training_stage import TrainingStageHandler

__all__ = [
    "ActivationPrecision",
    "BalancedAccuracy",
    "EpochReseedHandler",
    "EvaluationReportHandler",
    "EvidenceExportHandler",
    "ExpectedCalibrationError",
    "IncrementalDeletion",
    "PredictionsWriter",
    "ProgressBar",
    "PrototypePushHandler",
    "TrainingCheckpointHandler",
    "TrainingStageHandler",
    "push_prototypes",
]
