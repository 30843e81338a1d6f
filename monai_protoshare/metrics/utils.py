"""Input checks and conversions shared by the metrics (App. D): labels, predictions, batches, maps.

Every check raises ``ValueError`` naming the argument, what was expected, what was received and, for
per-case problems, the index of the first offending case in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.metrics import CumulativeIterationMetric

__all__ = [
    "BatchCumulativeMetric",
    "as_batch",
    "as_class_indices",
    "check_finite",
    "predicted_classes",
    "resize_attribution",
]

#: Number of classes assumed when only class indices are given: the paper grades HGG (1) vs LGG (0).
DEFAULT_NUM_CLASSES = 2


def as_batch(data: torch.Tensor | Sequence[torch.Tensor] | None, name: str) -> torch.Tensor | None:
    """Return a batch-first tensor from a batch-first tensor or a list of channel-first tensors (decollated data).

    Args:
        data: a tensor (B, ...), a list/tuple of B tensors (...), or None (returned unchanged).
        name: argument name used in error messages.

    Raises:
        ValueError: when the list is empty or its tensors have different shapes.
    """
    if data is None or isinstance(data, torch.Tensor):
        return data
    if not isinstance(data, (list, tuple)):
        raise ValueError(f"{name} must be a tensor or a list of tensors, got {type(data).__name__}.")
    if len(data) == 0:
        raise ValueError(f"{name} is an empty list: the evaluation set has no cases.")
    items = [torch.as_tensor(x) for x in data]
    shapes = {tuple(x.shape) for x in items}
    if len(shapes) > 1:
        bad = next(i for i, x in enumerate(items) if tuple(x.shape) != tuple(items[0].shape))
        raise ValueError(
            f"{name}: all cases must have the same shape to form a batch; case 0 has {tuple(items[0].shape)}, "
            f"case {bad} has {tuple(items[bad].shape)}."
        )
    return torch.stack(items, dim=0)


def _check_non_empty(x: torch.Tensor, name: str) -> None:
    if x.ndim == 0:
        raise ValueError(f"{name} must have a batch dimension, got a scalar.")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (batch size 0): the evaluation set has no cases.")


def predicted_classes(y_pred: torch.Tensor, name: str = "y_pred") -> tuple[torch.Tensor, int | None]:
    """Class indices from class indices (N,) / (N, 1) or scores (N, C) with C >= 2 (argmax over C).

    Returns:
        The indices (N,) as int64 and C when scores were given, else None.

    Raises:
        ValueError: on an empty batch or a tensor of more than two dimensions.
    """
    y_pred = torch.as_tensor(y_pred)
    _check_non_empty(y_pred, name)
    if y_pred.ndim == 2 and y_pred.shape[1] >= 2:
        return y_pred.argmax(dim=1).long(), int(y_pred.shape[1])
    if y_pred.ndim == 2 and y_pred.shape[1] == 1:
        y_pred = y_pred[:, 0]
    if y_pred.ndim != 1:
        raise ValueError(
            f"{name} must be class indices (N,) or (N, 1), or scores (N, C); got shape {tuple(y_pred.shape)}."
        )
    return _integer_valued(y_pred, name), None


def _integer_valued(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.is_floating_point():
        bad = torch.nonzero(~torch.isfinite(x) | (x != x.round())).flatten()
        if bad.numel():
            i = int(bad[0])
            raise ValueError(f"{name} must hold integer class indices; case {i} has {x[i].item()}.")
    return x.long()


def as_class_indices(y: torch.Tensor, name: str, num_classes: int) -> torch.Tensor:
    """Ground-truth labels as int64 class indices (N,), checked to lie in ``range(num_classes)``.

    Args:
        y: class indices (N,) or (N, 1), or one-hot labels (N, C) with C == ``num_classes``.
        name: argument name used in error messages.
        num_classes: number of classes C.

    Raises:
        ValueError: on an empty batch, non-integer values, a label outside ``range(num_classes)`` (naming the
            first such case) or rows of a (N, C) label that are not one-hot.
    """
    y = torch.as_tensor(y)
    _check_non_empty(y, name)
    if y.ndim == 2 and y.shape[1] > 1:
        if y.shape[1] != num_classes:
            raise ValueError(f"{name}: one-hot labels need {num_classes} columns, got shape {tuple(y.shape)}.")
        not_one_hot = ~(((y == 0) | (y == 1)).all(dim=1) & (y.sum(dim=1) == 1))
        if not_one_hot.any():
            i = int(torch.nonzero(not_one_hot)[0])
            raise ValueError(f"{name}: row {i} of the (N, C) labels is not one-hot: {y[i].tolist()}.")
        return y.argmax(dim=1).long()
    if y.ndim == 2:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{name} must be class indices (N,) or (N, 1) or one-hot (N, C); got {tuple(y.shape)}.")
    y = _integer_valued(y, name)
    outside = (y < 0) | (y >= num_classes)
    if outside.any():
        i = int(torch.nonzero(outside)[0])
        raise ValueError(
            f"{name}: labels must lie in {{{', '.join(map(str, range(num_classes)))}}}; case {i} has {int(y[i])}."
        )
    return y


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` naming the first case (index along dim 0) of ``x`` that holds NaN or Inf."""
    finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if not finite.all():
        i = int(torch.nonzero(~finite)[0])
        raise ValueError(f"{name} of case {i} contains NaN or Inf values.")


def resize_attribution(attribution: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Upsample attribution maps trilinearly (``align_corners=False``, as captum's ``interpolate``) to a shape.

    Args:
        attribution: maps (B, A, h, w, d); integer maps are converted to float32.
        spatial_shape: target (H, W, D).

    Returns:
        Maps (B, A, H, W, D) in a floating dtype (the input itself when the shape already matches).
    """
    if not attribution.is_floating_point():
        attribution = attribution.float()
    if tuple(attribution.shape[2:]) == tuple(spatial_shape):
        return attribution
    return F.interpolate(attribution, size=tuple(spatial_shape), mode="trilinear", align_corners=False)


class BatchCumulativeMetric(CumulativeIterationMetric):
    """A ``CumulativeIterationMetric`` that works on whole batches and names cases in its errors.

    Decollated inputs (lists of channel-first tensors, as MONAI evaluators produce) are stacked into one
    batch before ``_compute_tensor``, so per-case checks see the whole batch; a ``ValueError`` raised while
    computing a batch is re-raised with the running index of the batch's first case since ``reset()``.
    """

    def __call__(self, y_pred: Any, y: Any = None, **kwargs: Any) -> Any:
        first = len(self._buffers[0]) if self._buffers else 0  # local count; len(self) would all-gather
        y_pred = as_batch(y_pred, "y_pred")
        y = as_batch(y, "y")
        kwargs = {k: as_batch(v, k) for k, v in kwargs.items()}
        try:
            return super().__call__(y_pred, y, **kwargs)
        except ValueError as e:
            raise ValueError(
                f"{type(self).__name__}: {e} (case indices count from 0 within this batch, whose first case is "
                f"case {first} since reset())"
            ) from e

    def _buffer(self) -> list[torch.Tensor]:
        """The synced buffers as a list, or a ``ValueError`` when nothing was accumulated."""
        buffers = self.get_buffer()
        if buffers is None:
            raise ValueError(f"{type(self).__name__}.aggregate(): no cases were accumulated (empty evaluation set).")
        return buffers if isinstance(buffers, list) else [buffers]
