"""Incremental deletion score, IDS (App. D.4; DESIGN §8): how fast accuracy falls as the most attributed voxels go.

At step k = 0..S (S = 50: 2 % steps) voxels of the upsampled, channel-averaged attribution map are set to 0 in every
sequence, the most attributed first (nothing at k = 0, everything at k = S). Two deletion orders (``order``):

- ``"rank"`` (default, the paper's text: "a fixed fraction of the most highly attributed voxels is progressively
  removed"): exactly round(k·V/S) of the V voxels at step k, in rank order, ties broken by a seeded permutation;
- ``"quantile"`` (the peers' code, ``reference/peers.md`` §7): the voxels at or above the case's
  ``torch.quantile(a, 1 - k/S)``, so tied voxels go together (a map with 90 % zeros deletes everything at step 5).

The (balanced) accuracy over the evaluation set at each step is a curve of S + 1 points, scored by
:func:`deletion_score`. Lower is better: faithful evidence removes the information the model uses first.

The steps and their predictions (:func:`~monai_protoshare.metrics.deletion_steps.deletion_step_predictions`, one
set of forwards for both orders) are in :mod:`monai_protoshare.metrics.deletion_steps`; this module turns them into
curves and scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.utils import look_up_option

from monai_protoshare.metrics.balanced_accuracy import compute_balanced_accuracy
from monai_protoshare.metrics.deletion_steps import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_SEED,
    DEFAULT_STEPS,
    deletion_predictions,
    deletion_step_predictions,
)
from monai_protoshare.metrics.utils import DEFAULT_NUM_CLASSES, BatchCumulativeMetric, as_class_indices

__all__ = [
    "CURVE_METRICS",
    "IncrementalDeletionMetric",
    "compute_incremental_deletion",
    "deletion_curve",
    "deletion_score",
]

#: Set-level metrics a deletion curve can follow: the paper's text uses accuracy, MProtoNet's tables BAC.
CURVE_METRICS = ("accuracy", "balanced_accuracy")
#: Floor of the normalising range, as in the peers' ``process_iad`` (a flat curve scores 0).
_EPS = 1e-12


def deletion_curve(
    predictions: torch.Tensor, labels: torch.Tensor, metric: str = "accuracy", num_classes: int | None = None
) -> torch.Tensor:
    """Set-level accuracy or balanced accuracy at each deletion step.

    Args:
        predictions: class indices (N, S + 1) from :func:`deletion_predictions`.
        labels: ground-truth class indices (N,) or (N, 1), or one-hot (N, C).
        metric: ``"accuracy"`` (the paper's text) or ``"balanced_accuracy"`` (MProtoNet's tables).
        num_classes: C; defaults to 2.

    Returns:
        The curve (S + 1,), float64.

    Raises:
        ValueError: on an unknown ``metric`` (suggesting the closest), labels outside ``range(num_classes)``, or
            a number of labels different from N.
    """
    metric = look_up_option(metric, CURVE_METRICS)
    num_classes = num_classes or DEFAULT_NUM_CLASSES
    labels = as_class_indices(labels, "labels", num_classes)
    predictions = torch.as_tensor(predictions).cpu()
    if predictions.ndim != 2 or predictions.shape[0] != len(labels):
        raise ValueError(
            f"predictions must be (N, S + 1) with N = {len(labels)} labels, got {tuple(predictions.shape)}."
        )
    if metric == "accuracy":
        return (predictions == labels.cpu()[:, None]).double().mean(dim=0)
    return torch.tensor([compute_balanced_accuracy(p, labels, num_classes) for p in predictions.T], dtype=torch.double)


def deletion_score(curve: torch.Tensor | Sequence[float]) -> float:
    """IDS in percent (App. D.4, as the peers' ``process_iad``): the normalised area under a deletion curve.

    The curve is clipped to [min, max] of its first and last points, min-max normalised (a curve whose first and
    last points are equal scores 0), and its area is the mean of the trapezoids over the S intervals, × 100.

    Args:
        curve: (S + 1,) values at the deletion steps, S >= 1 (a tensor or a sequence of floats).

    Returns:
        IDS in [0, 100]; lower is better.

    Example:
        >>> deletion_score([1.0, 1.0, 0.7] + [0.3] * 48)  # peers' test vector, ID = 0.041429
        4.142857142857143
    """
    curve = torch.as_tensor(curve, dtype=torch.double).flatten()
    if curve.numel() < 2:
        raise ValueError(f"curve needs at least 2 points (S >= 1 steps), got {curve.numel()}.")
    low, high = sorted((float(curve[0]), float(curve[-1])))
    r = curve.clamp(low, high)
    r = r - r.min()
    r = r / r.max().clamp_min(_EPS)
    return float(((r[:-1] + r[1:]) / 2).mean()) * 100


def compute_incremental_deletion(
    predict: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    attribution: torch.Tensor,
    labels: torch.Tensor,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    metric: str = "accuracy",
    initial_predictions: torch.Tensor | None = None,
    num_classes: int | None = None,
    order: str = "rank",
    seed: int = DEFAULT_SEED,
) -> tuple[float, torch.Tensor]:
    """Incremental deletion score over an evaluation set (App. D.4; DESIGN §8).

    For both the accuracy and the balanced-accuracy score from one set of forwards, call
    :func:`deletion_predictions` once, then :func:`deletion_curve` and :func:`deletion_score` per metric (or use
    :class:`IncrementalDeletionMetric`).

    Args:
        predict: maps images (m, C_in, H, W, D) to logits (m, C); see :func:`deletion_predictions`.
        images: inputs (N, C_in, H, W, D).
        attribution: maps (N, A, h, w, d) for the ground-truth class.
        labels: ground-truth class indices (N,) or (N, 1), or one-hot (N, C); checked before any forward.
        steps: S deletion steps of 100/S % (S + 1 points).
        batch_size: inputs per forward of ``predict``.
        metric: ``"accuracy"`` (the paper's text) or ``"balanced_accuracy"`` (MProtoNet's tables).
        initial_predictions: class indices (N,) or logits (N, C) of the unmodified images, reused at step 0.
        num_classes: C; defaults to 2.
        order: ``"rank"`` (the paper's text) or ``"quantile"`` (the peers' code); see the module docstring.
        seed: seed of the tie-breaking permutation of the ``"rank"`` order.

    Returns:
        ``(ids, curve)``: IDS in percent and the curve (S + 1,).

    Raises:
        ValueError: see :func:`deletion_predictions` and :func:`deletion_curve`.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8 * 8, 2)).eval()
        >>> images, maps = torch.rand(3, 4, 8, 8, 8), torch.rand(3, 1, 4, 4, 4)
        >>> ids, curve = compute_incremental_deletion(net, images, maps, torch.tensor([0, 1, 1]))
    """
    num_classes = num_classes or DEFAULT_NUM_CLASSES
    labels = as_class_indices(labels, "labels", num_classes)
    images = torch.as_tensor(images)
    if len(labels) != images.shape[0]:
        raise ValueError(f"labels must hold one label per image, got {len(labels)} for {images.shape[0]} images.")
    predictions = deletion_predictions(
        predict, images, attribution, steps, batch_size, initial_predictions, order, seed
    )
    curve = deletion_curve(predictions, labels, metric, num_classes)
    return deletion_score(curve), curve


class IncrementalDeletionMetric(BatchCumulativeMetric):
    """IDS (App. D.4) accumulated over iterations: buffers each case's predictions at every step and its label.

    Called as ``metric(images, labels, attribution)`` (batch-first tensors or lists of channel-first tensors);
    the forwards of a batch run at call time, for both deletion orders at once (the paper's ``"rank"`` and the
    peers' ``"quantile"``, sharing every input they have in common), so only 2 × (B, S + 1) class indices are kept
    per batch. ``aggregate`` computes the set-level curves and scores.

    Args:
        predict: maps images (m, C_in, H, W, D) to logits (m, C), e.g. ``lambda x: net(x).logits``.
        steps: S deletion steps (S + 1 points).
        batch_size: inputs per forward of ``predict``.
        num_classes: C; defaults to 2.
        seed: seed of the tie-breaking permutation of the ``"rank"`` order.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8 * 8, 2)).eval()
        >>> metric = IncrementalDeletionMetric(net, steps=10)
        >>> _ = metric(torch.rand(2, 4, 8, 8, 8), torch.tensor([0, 1]), torch.rand(2, 1, 4, 4, 4))
        >>> sorted(metric.aggregate())
        ['curve', 'curve_bac', 'curve_peer', 'curve_peer_bac', 'ids', 'ids_bac', 'ids_peer', 'ids_peer_bac']
    """

    def __init__(
        self,
        predict: Callable[[torch.Tensor], torch.Tensor],
        steps: int = DEFAULT_STEPS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        num_classes: int | None = None,
        seed: int = DEFAULT_SEED,
    ) -> None:
        super().__init__()
        self.predict = predict
        self.seed = seed
        self.steps = steps
        self.batch_size = batch_size
        self.num_classes = num_classes or DEFAULT_NUM_CLASSES

    def __call__(  # type: ignore[override]
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        attribution: torch.Tensor,
        initial_predictions: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Run the deletion steps of a batch and buffer the step predictions (B, S + 1) of each order and labels (B,).

        Args:
            images: (B, C_in, H, W, D) or a list of (C_in, H, W, D).
            labels: (B,) / (B, 1) / one-hot (B, C), or a list of per-case labels.
            attribution: (B, A, h, w, d) or a list of (A, h, w, d).
            initial_predictions: optional (B,) class indices or (B, C) logits of the unmodified images.
        """
        return super().__call__(images, labels, attribution=attribution, initial_predictions=initial_predictions)

    def _compute_tensor(  # type: ignore[override]
        self,
        y_pred: torch.Tensor,
        y: torch.Tensor | None = None,
        attribution: torch.Tensor | None = None,
        initial_predictions: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """``y_pred`` the images, ``y`` the labels: [rank, quantile predictions (B, S + 1) each, labels (B,)]."""
        if y is None or attribution is None:
            raise ValueError("IncrementalDeletionMetric needs the labels and the attribution maps.")
        labels = as_class_indices(y, "labels", self.num_classes)
        if len(labels) != y_pred.shape[0]:
            raise ValueError(f"labels must hold one label per image, got {len(labels)} for {y_pred.shape[0]} images.")
        steps = deletion_step_predictions(
            self.predict, y_pred, attribution, self.steps, self.batch_size, initial_predictions, seed=self.seed
        )
        return [steps["rank"], steps["quantile"], labels.cpu()]

    def aggregate(self) -> dict[str, float | torch.Tensor]:
        """Set-level curves and scores over the cases accumulated since ``reset()``.

        Returns:
            IDS in percent from the accuracy and the balanced-accuracy curves of the paper's order (``ids``,
            ``ids_bac``, ``curve``, ``curve_bac`` (S + 1,)) and of the peers' quantile order (``ids_peer``,
            ``ids_peer_bac``, ``curve_peer``, ``curve_peer_bac``).
        """
        rank, quantile, labels = self._buffer()
        result: dict[str, float | torch.Tensor] = {}
        for suffix, predictions in (("", rank), ("_peer", quantile)):
            curve = deletion_curve(predictions, labels, "accuracy", self.num_classes)
            curve_bac = deletion_curve(predictions, labels, "balanced_accuracy", self.num_classes)
            result.update({f"ids{suffix}": deletion_score(curve), f"ids{suffix}_bac": deletion_score(curve_bac)})
            result.update({f"curve{suffix}": curve, f"curve{suffix}_bac": curve_bac})
        return result
