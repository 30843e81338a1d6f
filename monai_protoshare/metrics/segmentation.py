"""Segmentation metrics (issue 23): Dice and HD95 per BraTS region, and the deletion curve of a segmentation map.

- :func:`compute_region_metrics`: MONAI's ``compute_dice`` and ``compute_hausdorff_distance(percentile=95)`` per
  region channel. Conventions of the BraTS challenge for empty regions (e.g. no enhancing tumour): an empty ground
  truth and an empty prediction score Dice 1 and HD95 0; when exactly one of them is empty, Dice is 0 and HD95 is
  NaN (undefined; left out of means by :func:`summarise_region_metrics`, counted in ``hd95_undefined``).
- :func:`segmentation_deletion_curve`: delete (set to 0 in every channel) the most attributed voxels first in
  ``steps`` equal steps (50: 2 %), ranked by the attribution with ties in a seeded random order, and record after
  each step the region's summed probability Σ_v σ(logit_r(v)) or its Dice against a target; the area under the
  curve is :func:`~monai_protoshare.metrics.incremental_deletion.deletion_score` (the project's normalised area,
  0-100, lower = more faithful). This is the deletion metric of seed 004 with App. D.4's 2 % steps.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from monai.utils import convert_to_tensor, look_up_option

from monai_protoshare.metrics.incremental_deletion import deletion_score

__all__ = ["compute_region_metrics", "deletion_order", "segmentation_deletion_curve", "summarise_region_metrics"]

MEASURES = ("probability", "dice")


def compute_region_metrics(
    y_pred: torch.Tensor, y: torch.Tensor, spacing: float | Sequence[float] | None = None
) -> dict[str, torch.Tensor]:
    """Dice and HD95 of every case and region.

    Args:
        y_pred: binary predictions (B, R, H, W, D) (e.g. sigmoid(logits) > 0.5).
        y: binary ground truth (B, R, H, W, D).
        spacing: voxel size in mm for HD95 (voxels when None).

    Returns:
        ``{"dice": (B, R), "hd95": (B, R)}`` float32.
    """
    if y_pred.shape != y.shape or y.ndim != 5:
        raise ValueError(f"y_pred and y must both be (B, R, H, W, D); got {tuple(y_pred.shape)} and {tuple(y.shape)}.")
    y_pred, y = (y_pred > 0.5).float(), (y > 0.5).float()
    dice = compute_dice(y_pred, y, include_background=True, ignore_empty=False)
    pred_empty, true_empty = y_pred.flatten(2).sum(2) == 0, y.flatten(2).sum(2) == 0
    hd95 = torch.full_like(dice, float("nan"))
    both = ~pred_empty & ~true_empty
    if both.any():
        with warnings.catch_warnings():  # MONAI warns on empty regions: their HD95 is set by the conventions above
            warnings.filterwarnings("ignore", message=".* is all 0, this may result in nan/inf distance")
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)  # MONAI 1.6
            distances = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=spacing)
        hd95[both] = distances.to(hd95)[both]
    hd95[pred_empty & true_empty] = 0.0
    return {"dice": dice.float(), "hd95": hd95.float()}


def summarise_region_metrics(metrics: dict[str, torch.Tensor], regions: Sequence[str]) -> dict[str, float | int]:
    """Means over cases per region: ``dice_<region>``, ``hd95_<region>`` (NaN cases left out) and their counts."""
    summary: dict[str, float | int] = {}
    for r, name in enumerate(regions):
        summary[f"dice_{name}"] = float(metrics["dice"][:, r].mean())
        hd95 = metrics["hd95"][:, r]
        defined = ~torch.isnan(hd95)
        summary[f"hd95_{name}"] = float(hd95[defined].mean()) if defined.any() else float("nan")
        summary[f"hd95_undefined_{name}"] = int((~defined).sum())
    return summary


def deletion_order(attribution: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Voxel indices (N,) of a map, most attributed first, ties in a random order fixed by ``seed``."""
    flat = attribution.flatten()
    permutation = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(seed)).to(flat.device)
    return permutation[torch.argsort(flat[permutation], descending=True, stable=True)]


@torch.no_grad()
def segmentation_deletion_curve(
    predict: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    attribution: torch.Tensor,
    region: int,
    measure: str = "probability",
    target: torch.Tensor | None = None,
    steps: int = 50,
    seed: int = 0,
    batch_size: int = 8,
) -> tuple[torch.Tensor, float]:
    """Deletion curve of one case and its normalised area.

    Args:
        predict: images (m, C, H, W, D) -> logits (m, R, H, W, D) (a network in eval mode).
        image: the case (1, C, H, W, D).
        attribution: its map (H, W, D) or (1, 1, H, W, D) on the image grid.
        region: r, the logit channel followed.
        measure: ``"probability"`` (Σ_v σ(logit_r)) or ``"dice"`` (of logit_r > 0 against ``target``).
        target: ground truth of region r, (H, W, D) or (1, 1, H, W, D); needed for ``"dice"``.
        steps: S; step k deletes the first ⌊k N / S⌋ voxels of :func:`deletion_order`.
        seed: tie-break seed.
        batch_size: deleted copies per forward.

    Returns:
        ``(curve (S + 1,) float64, area)``, area = ``deletion_score(curve)`` in [0, 100].
    """
    measure = look_up_option(measure, MEASURES)
    image, attribution = (convert_to_tensor(t, track_meta=False) for t in (image, attribution))  # no batch metadata
    if image.ndim != 5 or image.shape[0] != 1 or attribution.numel() != image[0, 0].numel():
        raise ValueError(
            f"image must be one case (1, C, H, W, D) and attribution its (H, W, D) map; got {tuple(image.shape)} "
            f"and {tuple(attribution.shape)}."
        )
    if measure == "dice" and target is None:
        raise ValueError("measure='dice' needs target, the region's ground truth (H, W, D).")
    spatial = image.shape[2:]
    order = deletion_order(attribution.reshape(spatial), seed)
    counts = [k * order.numel() // steps for k in range(steps + 1)]
    truth = None if target is None else (target.reshape(1, 1, *spatial) > 0.5).float().to(image.device)
    values: list[float] = []
    for start in range(0, steps + 1, batch_size):
        chunk = counts[start : start + batch_size]
        keep = torch.ones(len(chunk), order.numel(), dtype=image.dtype, device=image.device)
        for j, n in enumerate(chunk):
            keep[j, order[:n]] = 0
        logits = predict(image * keep.view(len(chunk), 1, *spatial))[:, region : region + 1]
        if measure == "probability":
            values += torch.sigmoid(logits).flatten(1).sum(1).tolist()
        else:
            values += compute_dice((logits > 0).float(), truth.expand_as(logits), ignore_empty=False)[:, 0].tolist()
    curve = torch.tensor(values, dtype=torch.float64)
    return curve, deletion_score(curve)
