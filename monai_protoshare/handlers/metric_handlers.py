"""Thin Ignite handlers over the metrics of :mod:`monai_protoshare.metrics` (App. D), as MONAI's ``ROCAUC``.

Each handler accumulates over an evaluation epoch and writes its value to ``engine.state.metrics[name]``. The
default ``output_transform`` reads these keys of ``engine.state.output`` (a batch dict or a decollated list of
dicts, via ``monai.handlers.from_engine``); lists of per-case tensors are stacked, so each metric sees whole
batches (Ignite would otherwise feed decollated data one case at a time) and errors name the case:

- ``BalancedAccuracy``: ``pred`` (scores (B, C) or class indices), ``label`` (class indices (B,)).
- ``ExpectedCalibrationError``: ``pred`` (probabilities (B, C), softmax applied), ``label``.
- ``ActivationPrecision``: ``attribution`` (maps (B, A, h, w, d)), ``mask`` (region (B, 1, H, W, D)).
- ``IncrementalDeletion``: ``image`` (inputs (B, 4, H, W, D)), ``attribution``, ``label``.

Example:
    >>> ids = IncrementalDeletion(lambda x: net(x).logits, steps=50, batch_size=8)
    >>> ids.attach(evaluator, "ids")  # evaluator.state.output holds image, attribution and label per case
    >>> BalancedAccuracy().attach(evaluator, "bac")
    >>> evaluator.run()  # evaluator.state.metrics["ids"]; both curves in evaluator.state.metric_details["ids"]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.metrics.metric import reinit__is_reduced
from monai.handlers import IgniteMetricHandler, from_engine
from monai.utils import look_up_option

from monai_protoshare.metrics import (
    ActivationPrecisionMetric,
    BalancedAccuracyMetric,
    ExpectedCalibrationErrorMetric,
    IncrementalDeletionMetric,
)
from monai_protoshare.metrics.activation_precision import DEFAULT_THRESHOLD
from monai_protoshare.metrics.calibration import DEFAULT_BINS
from monai_protoshare.metrics.deletion_steps import DEFAULT_BATCH_SIZE, DEFAULT_SEED, DEFAULT_STEPS, DELETION_ORDERS
from monai_protoshare.metrics.incremental_deletion import CURVE_METRICS
from monai_protoshare.metrics.utils import as_batch

__all__ = ["ActivationPrecision", "BalancedAccuracy", "ExpectedCalibrationError", "IncrementalDeletion"]


def _batched(output_transform: Callable | None, keys: Sequence[str]) -> Callable:
    """``output_transform`` (default ``from_engine(keys)``) with its lists of per-case tensors stacked into batches."""
    transform = output_transform or from_engine(list(keys))

    def batched(output: Any) -> tuple:
        items = transform(output)
        return tuple(as_batch(x, keys[i] if i < len(keys) else f"output[{i}]") for i, x in enumerate(items))

    return batched


class BalancedAccuracy(IgniteMetricHandler):
    """Balanced accuracy (eq. 24) over the evaluation set; ``output_transform`` yields ``(pred, label)``.

    Args:
        num_classes: C; defaults to the C of score inputs, else 2.
        output_transform: defaults to ``from_engine(["pred", "label"])``.
    """

    def __init__(self, num_classes: int | None = None, output_transform: Callable | None = None) -> None:
        super().__init__(
            metric_fn=BalancedAccuracyMetric(num_classes),
            output_transform=_batched(output_transform, ("pred", "label")),
            save_details=False,
        )


class ExpectedCalibrationError(IgniteMetricHandler):
    """Expected calibration error over the evaluation set; ``output_transform`` yields ``(probabilities, label)``.

    Args:
        n_bins: number of equal-width confidence bins.
        output_transform: defaults to ``from_engine(["pred", "label"])``; ``pred`` must hold probabilities (e.g. a
            post-transform ``Activations(softmax=True)``).
    """

    def __init__(self, n_bins: int = DEFAULT_BINS, output_transform: Callable | None = None) -> None:
        super().__init__(
            metric_fn=ExpectedCalibrationErrorMetric(n_bins),
            output_transform=_batched(output_transform, ("pred", "label")),
            save_details=False,
        )


class ActivationPrecision(IgniteMetricHandler):
    """Mean activation precision (eq. 25); ``output_transform`` yields ``(attribution, mask)``.

    With ``save_details`` the per-case values go to ``engine.state.metric_details[name]``.

    Args:
        threshold: activation threshold on the normalised map.
        per_channel: one value per attribution channel (the metric is then (A,)).
        output_transform: defaults to ``from_engine(["attribution", "mask"])``.
        save_details: keep the per-case values.
    """

    def __init__(
        self,
        threshold: float = DEFAULT_THRESHOLD,
        per_channel: bool = False,
        output_transform: Callable | None = None,
        save_details: bool = True,
    ) -> None:
        super().__init__(
            metric_fn=ActivationPrecisionMetric(threshold, per_channel),
            output_transform=_batched(output_transform, ("attribution", "mask")),
            save_details=save_details,
        )


class IncrementalDeletion(IgniteMetricHandler):
    """IDS in percent (App. D.4); ``output_transform`` yields ``(image, attribution, label)``.

    Both deletion orders run from one set of forwards (the paper's ``"rank"``, the peers' ``"quantile"``); the metric
    value is the score of ``metric`` and ``order``; with ``save_details`` the whole result (``ids``, ``ids_bac``,
    ``curve``, ``curve_bac`` and the ``_peer`` versions) goes to ``engine.state.metric_details[name]``.

    Args:
        predict: maps images (m, C_in, H, W, D) to logits (m, C), e.g. ``lambda x: net(x).logits``.
        steps: deletion steps (steps + 1 points).
        batch_size: inputs per forward of ``predict``.
        metric: ``"accuracy"`` (the paper's text) or ``"balanced_accuracy"`` (MProtoNet's tables).
        num_classes: C; defaults to 2.
        output_transform: defaults to ``from_engine(["image", "attribution", "label"])``.
        save_details: keep the curves and scores.
        order: the score's deletion order, ``"rank"`` (the paper's text: 2 % of the voxels a step, ties broken by
            a seeded permutation) or ``"quantile"`` (the peers' thresholds, ties deleted together).
        seed: seed of the tie-breaking permutation.
    """

    def __init__(
        self,
        predict: Callable[[torch.Tensor], torch.Tensor],
        steps: int = DEFAULT_STEPS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        metric: str = "accuracy",
        num_classes: int | None = None,
        output_transform: Callable | None = None,
        save_details: bool = True,
        order: str = "rank",
        seed: int = DEFAULT_SEED,
    ) -> None:
        peer = "_peer" if look_up_option(order, DELETION_ORDERS) == "quantile" else ""
        bac = "_bac" if look_up_option(metric, CURVE_METRICS) == "balanced_accuracy" else ""
        self.score_key = f"ids{peer}{bac}"
        super().__init__(
            metric_fn=IncrementalDeletionMetric(predict, steps, batch_size, num_classes, seed),
            output_transform=_batched(output_transform, ("image", "attribution", "label")),
            save_details=save_details,
        )

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        """Run the deletion steps of one batch: ``output`` is ``(images, attribution, labels)``."""
        if len(output) != 3:
            raise ValueError(f"output must be (image, attribution, label), got {len(output)} items.")
        images, attribution, labels = output
        self.metric_fn(images, labels, attribution)

    def compute(self) -> float:
        """The IDS of ``metric``; the full result is saved to ``engine.state.metric_details`` with ``save_details``."""
        result = self.metric_fn.aggregate()
        self._is_reduced = True
        if self.save_details:
            if self._engine is None or self._name is None:
                raise RuntimeError("call attach() to connect an engine before computing the metric.")
            self._engine.state.metric_details[self._name] = result
        return result[self.score_key]
