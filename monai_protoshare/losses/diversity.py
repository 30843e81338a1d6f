"""Prototype-diversity regulariser L_div (eq. 10)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PrototypeDiversityLoss", "prototype_diversity_loss"]


def prototype_diversity_loss(vectors: list[torch.Tensor]) -> torch.Tensor:
    """Eq. (10): the mean over pairs i < j of cos(p_i, p_j) within each scale, averaged over scales.

    Args:
        vectors: prototypes per scale, (K_s, E). Scales with one prototype have no pair and are skipped.

    Returns:
        Scalar (0 when no scale has a pair).
    """
    per_scale = []
    for p in vectors:
        if p.shape[0] < 2:
            continue
        unit = F.normalize(p, dim=1, eps=1e-8)
        cos = unit @ unit.t()
        i, j = torch.triu_indices(p.shape[0], p.shape[0], offset=1, device=p.device)
        per_scale.append(cos[i, j].mean())
    return torch.stack(per_scale).mean() if per_scale else vectors[0].new_zeros(())


class PrototypeDiversityLoss(nn.Module):
    """Module form of :func:`prototype_diversity_loss` for a network's prototype bank."""

    def forward(self, network: nn.Module) -> torch.Tensor:
        return prototype_diversity_loss(list(network.prototypes.vectors))
