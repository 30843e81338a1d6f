"""Evaluation metrics in three layers (App. D): pure functions, MONAI cumulative metrics, Ignite handlers.

The handlers live in :mod:`monai_protoshare.handlers.metric_handlers`.
"""

from __future__ import annotations

from monai_protoshare.metrics.activation_precision import ActivationPrecisionMetric, compute_activation_precision
from monai_protoshare.metrics.balanced_accuracy import BalancedAccuracyMetric, compute_balanced_accuracy
from monai_protoshare.metrics.calibration import (
    ExpectedCalibrationErrorMetric,
    calibration_bins,
    compute_expected_calibration_error,
    reliability_diagram,
)
from monai_protoshare.metrics.deletion_steps import deletion_counts, deletion_predictions, deletion_step_predictions
from monai_protoshare.metrics.incremental_deletion import (
    IncrementalDeletionMetric,
    compute_incremental_deletion,
    deletion_curve,
    deletion_score,
)

__all__ = [
    "ActivationPrecisionMetric",
    "BalancedAccuracyMetric",
    "ExpectedCalibrationErrorMetric",
    "IncrementalDeletionMetric",
    "calibration_bins",
    "compute_activation_precision",
    "compute_balanced_accuracy",
    "compute_expected_calibration_error",
    "compute_incremental_deletion",
    "deletion_counts",
    "deletion_curve",
    "deletion_predictions",
    "deletion_score",
    "deletion_step_predictions",
    "reliability_diagram",
]
