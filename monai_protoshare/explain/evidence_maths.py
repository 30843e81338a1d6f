"""Tensor maths of the per-case prototype evidence (eq. 29-31, DESIGN §8, §10): no forward pass, no file.

* ``Δy_c^k = w_cls[c, k] · S_k(x)`` (eq. 31, :func:`prototype_contributions`);
* population sharedness ``φ_k = min_c mean_{x ∈ R, y(x) = c} S_k(x)`` (eq. 29, :func:`prototype_sharedness`) and
  the most shared prototype of each scale (eq. 30, :func:`most_shared_prototypes`);
* single-prototype maps, density-rescaled and upsampled (:func:`prototype_maps`);
* the evidence mass inside a mask and the label-overlay cutoff (:func:`evidence_mass_in_mask`,
  :func:`overlay_cutoff`).

The forward passes that produce the similarities are in :mod:`monai_protoshare.explain.evidence`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..networks import PrototypeNetwork, PrototypeOutput
from .attribution import upsample_to

__all__ = [
    "OVERLAY_THRESHOLD",
    "evidence_mass_in_mask",
    "most_shared_prototypes",
    "overlay_cutoff",
    "prototype_contributions",
    "prototype_maps",
    "prototype_sharedness",
]

#: Relative level of the min-max normalised class evidence kept in the label overlay (AP's rule, DESIGN §8).
OVERLAY_THRESHOLD = 0.5


def prototype_contributions(class_weights: torch.Tensor, similarities: torch.Tensor) -> torch.Tensor:
    """Eq. (31), Fig. 5: ``Δy_c^k(x) = w_cls[c, k] · S_k(x)`` for every class and prototype.

    Args:
        class_weights: w_cls, (C, K).
        similarities: S, (B, K).

    Returns:
        (B, C, K); summed over K it is the logits of the bias-free classifier (eq. 5).

    Raises:
        ValueError: when the prototype counts differ.
    """
    if similarities.ndim != 2 or class_weights.ndim != 2 or similarities.shape[1] != class_weights.shape[1]:
        raise ValueError(
            f"class_weights (C, K) and similarities (B, K) must share K; received {tuple(class_weights.shape)} "
            f"and {tuple(similarities.shape)}."
        )
    return similarities.unsqueeze(1) * class_weights.unsqueeze(0).to(similarities)


def prototype_maps(
    network: PrototypeNetwork, output: PrototypeOutput, indices: Sequence[int], size: Sequence[int], case: int = 0
) -> torch.Tensor:
    """Attention maps of chosen prototypes of one case, density-rescaled and upsampled to ``size``.

    Args:
        network: the network that produced ``output``.
        output: its :class:`~monai_protoshare.networks.PrototypeOutput` (attention (B, K_s, h, w, d) per scale).
        indices: global prototype indices (scale order).
        size: (H, W, D), the input grid.
        case: which case of the batch.

    Returns:
        (len(indices), H, W, D): each map times its scale's voxel count (1 = uniform attention, DESIGN §8).
    """
    slices = network.scale_slices()
    maps = []
    for j in indices:
        scale = next(i for i, sl in enumerate(slices) if sl.start <= j < sl.stop)
        attention = output.attention[scale][case, j - slices[scale].start]  # (h, w, d)
        scaled = attention * attention.numel()
        maps.append(upsample_to(scaled[None, None], tuple(size))[0, 0])
    if not maps:
        return output.logits.new_zeros((0, *size))
    return torch.stack(maps)


def prototype_sharedness(similarities: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Population sharedness (App. G, eq. 29): ``φ_k = min_c mean_{n: y_n = c} S_k(x_n)``.

    With one case per class this is the paper's ``min(S_k(x^LGG), S_k(x^HGG))``.

    Args:
        similarities: (N, K) over a reference set.
        labels: (N,) class of each reference case.
        num_classes: C; every class must occur in ``labels``.

    Returns:
        (K,).

    Raises:
        ValueError: when shapes disagree or a class has no reference case.
    """
    labels = torch.as_tensor(labels).reshape(-1).long()
    if similarities.ndim != 2 or similarities.shape[0] != labels.numel():
        raise ValueError(
            f"similarities must be (N, K) with one label per row; received {tuple(similarities.shape)} and "
            f"{labels.numel()} labels."
        )
    missing = [c for c in range(num_classes) if not bool((labels == c).any())]
    if missing:
        raise ValueError(f"sharedness needs reference cases of every class; classes {missing} have none.")
    means = torch.stack([similarities[labels == c].mean(dim=0) for c in range(num_classes)])  # (C, K)
    return means.min(dim=0).values


def most_shared_prototypes(network: PrototypeNetwork, sharedness: torch.Tensor) -> list[int]:
    """Eq. (30): ``k_s* = argmax_k φ_s^k`` for every active scale, as global indices."""
    return [sl.start + int(sharedness[sl].argmax()) for sl in network.scale_slices()]


def evidence_mass_in_mask(evidence_map: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray) -> float:
    """Fraction of the evidence mass inside a mask: ``Σ_{v ∈ mask} max(M_v, 0) / Σ_v max(M_v, 0)``.

    Computed on one grid (e.g. the exported native-space map and the native tumour segmentation), where all
    voxels have the same volume. Negative values (none for eq. 28 maps) carry no mass.

    Args:
        evidence_map: (H, W, D) (or any shape) map.
        mask: same shape; non-zero voxels are inside (e.g. the whole tumour, seg > 0).

    Returns:
        The fraction in [0, 1]; ``nan`` when the map has no positive mass.

    Raises:
        ValueError: when the shapes differ.
    """
    values = torch.as_tensor(np.asarray(evidence_map), dtype=torch.float64).clamp_min(0.0)
    inside = torch.as_tensor(np.asarray(mask)) != 0
    if values.shape != inside.shape:
        raise ValueError(
            f"evidence_map and mask must have the same shape; received {tuple(values.shape)} and {tuple(inside.shape)}."
        )
    total = float(values.sum())
    if total <= 0.0:
        return float("nan")
    return float(values[inside].sum()) / total


def overlay_cutoff(class_map: torch.Tensor, threshold: float = OVERLAY_THRESHOLD) -> float:
    """The class-map value at the relative level ``threshold`` of its range on the network grid.

    The label overlay keeps the voxels ``>=`` this value: the min-max normalisation and 0.5 threshold of the
    activation-precision metric (eq. 25, DESIGN §8).

    Raises:
        ValueError: ``threshold`` outside [0, 1].
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"overlay_threshold must be in [0, 1]; received {threshold}.")
    low, high = float(class_map.min()), float(class_map.max())
    return low + threshold * (high - low)
