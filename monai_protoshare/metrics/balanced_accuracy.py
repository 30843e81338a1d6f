"""Balanced accuracy (eq. 24, App. D.3): the mean of the per-class recalls, (TPR + TNR) / 2 for two classes."""

from __future__ import annotations

import torch

from monai_protoshare.metrics.utils import (
    DEFAULT_NUM_CLASSES,
    BatchCumulativeMetric,
    as_class_indices,
    predicted_classes,
)

__all__ = ["BalancedAccuracyMetric", "compute_balanced_accuracy"]


def compute_balanced_accuracy(y_pred: torch.Tensor, y: torch.Tensor, num_classes: int | None = None) -> float:
    """Balanced accuracy, eq. (24): the mean over classes of the recall, (TPR + TNR) / 2 for two classes.

    As ``sklearn.metrics.balanced_accuracy_score``, classes absent from ``y`` are left out of the mean.

    Args:
        y_pred: predicted class indices (N,) or (N, 1), or scores (N, C) (argmax over C).
        y: ground-truth class indices (N,) or (N, 1), or one-hot (N, C).
        num_classes: C; defaults to the C of score inputs, else 2 (HGG = 1, LGG = 0).

    Returns:
        The balanced accuracy in [0, 1].

    Raises:
        ValueError: on an empty set, different lengths, or labels outside ``range(num_classes)``.

    Example:
        >>> compute_balanced_accuracy(torch.tensor([1, 1, 0, 1]), torch.tensor([1, 1, 0, 0]))
        0.75
    """
    pred, score_classes = predicted_classes(y_pred, "y_pred")
    num_classes = num_classes or score_classes or DEFAULT_NUM_CLASSES
    y = as_class_indices(y, "y", num_classes).to(pred.device)
    if len(pred) != len(y):
        raise ValueError(f"y_pred and y must hold the same number of cases, got {len(pred)} and {len(y)}.")
    support = torch.bincount(y, minlength=num_classes)
    hits = torch.bincount(y[pred == y], minlength=num_classes)
    present = support > 0
    return float((hits[present].double() / support[present]).mean())


class BalancedAccuracyMetric(BatchCumulativeMetric):
    """Balanced accuracy (eq. 24) accumulated over iterations: buffers predicted classes and labels per case.

    Args:
        num_classes: C; defaults to the C of score inputs, else 2.

    Example:
        >>> metric = BalancedAccuracyMetric()
        >>> _ = metric(torch.tensor([[0.2, 0.8], [0.9, 0.1]]), torch.tensor([1, 1]))
        >>> _ = metric(torch.tensor([[0.3, 0.7]]), torch.tensor([0]))
        >>> metric.aggregate()  # recalls: class 1 -> 1/2, class 0 -> 0/1
        0.25
    """

    def __init__(self, num_classes: int | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> list[torch.Tensor]:  # type: ignore[override]
        """Per-case predicted classes (B,) and labels (B,), checked; the buffers of this metric."""
        if y is None:
            raise ValueError("BalancedAccuracyMetric needs the labels y.")
        pred, score_classes = predicted_classes(y_pred, "y_pred")
        labels = as_class_indices(y, "y", self.num_classes or score_classes or DEFAULT_NUM_CLASSES)
        if len(pred) != len(labels):
            raise ValueError(f"y_pred and y must hold the same number of cases, got {len(pred)} and {len(labels)}.")
        return [pred, labels]

    def aggregate(self) -> float:
        """Balanced accuracy over every case accumulated since ``reset()``."""
        pred, labels = self._buffer()
        # labels were checked per batch; any C above the largest index gives the same per-class recalls
        num_classes = self.num_classes or max(DEFAULT_NUM_CLASSES, int(labels.max()) + 1)
        return compute_balanced_accuracy(pred, labels, num_classes)
