"""Activation precision (eq. 25, App. D.4): the share of a thresholded attribution map inside the tumour mask."""

from __future__ import annotations

import torch

from monai_protoshare.metrics.utils import BatchCumulativeMetric, check_finite, resize_attribution

__all__ = ["ActivationPrecisionMetric", "compute_activation_precision"]

#: Normalised attribution at or above this value counts as "activated" (eq. 25; DESIGN §8).
DEFAULT_THRESHOLD = 0.5
#: Floor of the per-case max in the min-max normalisation, so a constant map becomes all zeros (peers' `lc`).
_EPS = 1e-12


def compute_activation_precision(
    attribution: torch.Tensor, mask: torch.Tensor, threshold: float = DEFAULT_THRESHOLD, per_channel: bool = False
) -> torch.Tensor:
    """Activation precision, eq. (25): AP = |mask ∩ T| / max(|T|, 1) with T the thresholded attribution map.

    The map is upsampled trilinearly (``align_corners=False``) to the mask's shape, min-max normalised per case
    jointly over all its channels and voxels, and thresholded with ``>= threshold``. With A > 1 channels
    (e.g. 4-channel occlusion maps) AP is computed per channel; the result is their mean unless
    ``per_channel``. A constant (e.g. all-zero) map activates nothing and gives AP = 0.

    Args:
        attribution: maps (B, A, h, w, d) at the mask's resolution or coarser.
        mask: region (B, 1, H, W, D); non-zero voxels belong to it (whole tumour: BraTS labels {1, 2, 4}).
        threshold: activation threshold on the normalised map.
        per_channel: return (B, A) per-channel values instead of their mean (B,).

    Returns:
        AP per case (B,), or per case and channel (B, A), float64.

    Raises:
        ValueError: on shapes that do not fit (naming both), an empty batch, or a map holding NaN/Inf (naming the
            case).

    Example:
        >>> mask = torch.zeros(1, 1, 8, 8, 8); mask[..., :4, :, :] = 1
        >>> compute_activation_precision(mask.clone(), mask)
        tensor([1.], dtype=torch.float64)
    """
    attribution, mask = torch.as_tensor(attribution), torch.as_tensor(mask)
    if attribution.ndim != 5 or mask.ndim != 5 or mask.shape[1] != 1:
        raise ValueError(
            f"attribution must be (B, A, h, w, d) and mask (B, 1, H, W, D); got {tuple(attribution.shape)} and "
            f"{tuple(mask.shape)}."
        )
    if attribution.shape[0] != mask.shape[0]:
        raise ValueError(
            f"attribution and mask must hold the same number of cases, got {attribution.shape[0]} and {mask.shape[0]}."
        )
    if attribution.shape[0] == 0:
        raise ValueError("attribution is empty (batch size 0): the evaluation set has no cases.")
    if any(a > m for a, m in zip(attribution.shape[2:], mask.shape[2:], strict=True)):
        raise ValueError(
            f"attribution spatial shape {tuple(attribution.shape[2:])} is larger than the mask's "
            f"{tuple(mask.shape[2:])}: the mask must have the image's spatial shape (maps are at the image "
            "resolution or coarser)."
        )
    check_finite(attribution, "attribution")
    maps = resize_attribution(attribution, mask.shape[2:])
    flat = maps.flatten(1)  # (B, A * H * W * D): the normalisation is joint over channels and voxels
    low = flat.amin(dim=1).view(-1, 1, 1, 1, 1)
    high = (flat.amax(dim=1).view(-1, 1, 1, 1, 1) - low).clamp_min(_EPS)
    active = (maps - low) / high >= threshold  # (B, A, H, W, D)
    inside = (active & (mask != 0).to(active.device)).flatten(2).sum(dim=2)
    precision = inside.double() / active.flatten(2).sum(dim=2).clamp_min(1)  # (B, A)
    return precision if per_channel else precision.mean(dim=1)


class ActivationPrecisionMetric(BatchCumulativeMetric):
    """Activation precision (eq. 25) accumulated over iterations; ``aggregate`` is the mean over cases.

    The per-case values (B,) (or (B, A) with ``per_channel``) stay in the buffer (``get_buffer()``).
    Called as ``metric(attribution, mask)`` with batch-first tensors or lists of channel-first tensors.

    Args:
        threshold: activation threshold on the normalised map.
        per_channel: keep one value per attribution channel; ``aggregate`` then returns (A,).

    Example:
        >>> metric = ActivationPrecisionMetric()
        >>> mask = torch.zeros(2, 1, 8, 8, 8); mask[..., :4, :, :] = 1
        >>> _ = metric(mask.clone(), mask)
        >>> metric.aggregate()
        tensor(1., dtype=torch.float64)
    """

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, per_channel: bool = False) -> None:
        super().__init__()
        self.threshold = threshold
        self.per_channel = per_channel

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        """AP of each case of the batch: ``y_pred`` the attribution (B, A, h, w, d), ``y`` the mask (B, 1, H, W, D)."""
        if y is None:
            raise ValueError("ActivationPrecisionMetric needs the mask y.")
        return compute_activation_precision(y_pred, y, self.threshold, self.per_channel)

    def aggregate(self) -> torch.Tensor:
        """Mean AP over the cases accumulated since ``reset()``: a scalar, or (A,) with ``per_channel``."""
        (values,) = self._buffer()
        return values.mean(dim=0)
