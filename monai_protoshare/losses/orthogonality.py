"""Orthogonality of each class's prototypes (Deformable ProtoPNet, Donnelly et al. 2022; FPN-IAIA-BL eq. 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.utils import look_up_option
from torch import nn

__all__ = ["ORTHOGONALITY_GROUPS", "PrototypeOrthogonalityLoss", "prototype_orthogonality_loss"]

#: which prototypes must be mutually orthogonal: those of one class at one level, or of one class at any level
ORTHOGONALITY_GROUPS = ("class_level", "class")


def prototype_orthogonality_loss(vectors: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``Σ_g ‖P̂_g P̂_gᵀ − I‖²_F`` with P̂_g the unit-length prototypes of group g.

    Args:
        vectors: prototypes, (K, d).
        groups: group index of each prototype, (K,) int64.

    Returns:
        Scalar, 0 when the prototypes of every group are pairwise orthogonal.
    """
    unit = F.normalize(vectors, dim=1, eps=1e-8)
    total = vectors.new_zeros(())
    for g in groups.unique().tolist():
        p = unit[groups == g]
        gram = p @ p.t()
        total = total + (gram - torch.eye(p.shape[0], device=p.device, dtype=p.dtype)).square().sum()
    return total


class PrototypeOrthogonalityLoss(nn.Module):
    """:func:`prototype_orthogonality_loss` over a class-specific network's prototype bank.

    Args:
        groups: ``"class_level"`` (default: prototypes of one class are only compared with the features of their
            own pyramid level, so only those need to differ) or ``"class"`` (all of a class's prototypes, as in
            Deformable ProtoPNet's single-level network).
    """

    def __init__(self, groups: str = "class_level") -> None:
        super().__init__()
        self.groups = look_up_option(groups, ORTHOGONALITY_GROUPS)

    def forward(self, network: nn.Module) -> torch.Tensor:
        if getattr(network, "ownership", "shared") != "class_specific":
            raise ValueError("the orthogonality loss groups prototypes by class: it needs class-specific prototypes.")
        vectors = torch.cat(list(network.prototypes.vectors))
        classes = network.prototype_class_identity.argmax(dim=0)  # (K_total,)
        if self.groups == "class_level":
            levels = torch.cat(
                [
                    torch.full((sl.stop - sl.start,), i, device=classes.device)
                    for i, sl in enumerate(network.scale_slices())
                ]
            )
            classes = classes * len(network.scale_slices()) + levels
        return prototype_orthogonality_loss(vectors, classes)
