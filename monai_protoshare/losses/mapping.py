"""Per-scale mapping loss: MProtoNet's equivariance of the attention maps under rescaling (App. B.1)."""

from __future__ import annotations

import torch
from torch import nn

from ..networks.layers import resize_trilinear

__all__ = ["MappingLoss", "mapping_loss"]


def mapping_loss(mask: torch.Tensor, rescaled_mask: torch.Tensor, sparsity_weight: float = 1.0) -> torch.Tensor:
    """``mean|S(M(h)) − M(S(h))| + sparsity_weight · mean|M(h)|`` (MProtoNet).

    Args:
        mask: M(h), the maps of the original features, (B, K, H, W, D), values in [0, 1].
        rescaled_mask: M(S(h)), the maps recomputed from the rescaled features, (B, K, h, w, d).
        sparsity_weight: weight of MProtoNet's ``mean|M|`` term (1 in MProtoNet; 0 disables it).

    Returns:
        Scalar loss.
    """
    resized = resize_trilinear(mask, rescaled_mask.shape[2:], align_corners=True)
    loss = (resized - rescaled_mask).abs().mean()
    if sparsity_weight:
        loss = loss + sparsity_weight * mask.abs().mean()
    return loss


class MappingLoss(nn.Module):
    """Mapping loss L_map^s of every active scale of a :class:`~monai_protoshare.networks.PrototypeNetwork`.

    One rescale factor r is drawn per call from ``scale_factors`` (torch's global RNG, so it is seeded
    with everything else); the mapping input of each scale is resized trilinearly to an explicit size
    ``round(r · n)`` (never a ``scale_factor``, which crashed MAProtoNet's code at odd sizes) and its maps
    are recomputed. The loss compares the masks before spatial normalisation (M¹ of eq. 12): the L1
    normalisation of eq. (13) rescales a map by its mass, which differs between resolutions by r³, so
    comparing normalised maps would penalise the resolution itself rather than a misplaced map.

    Args:
        scale_factors: candidate r (MProtoNet: 0.75, 0.875).
        sparsity_weight: weight of the ``mean|M|`` term.
    """

    def __init__(self, scale_factors: tuple[float, ...] = (0.75, 0.875), sparsity_weight: float = 1.0) -> None:
        super().__init__()
        if not scale_factors or min(scale_factors) <= 0:
            raise ValueError(f"scale_factors must be positive; got {scale_factors}.")
        self.scale_factors = tuple(float(r) for r in scale_factors)
        self.sparsity_weight = float(sparsity_weight)

    def forward(self, network: nn.Module, output) -> list[torch.Tensor]:
        """Args: network and its :class:`PrototypeOutput`. Returns one scalar loss per active scale."""
        if network.mapping_heads is None:
            return []
        r = self.scale_factors[int(torch.randint(len(self.scale_factors), (1,)))]
        losses = []
        for head, mask, features in zip(network.mapping_heads, output.masks, output.mapping_inputs):
            size = [max(1, round(r * n)) for n in features.shape[2:]]
            rescaled = resize_trilinear(features, size, align_corners=True)
            rescaled_mask, _ = head(rescaled)
            losses.append(mapping_loss(mask, rescaled_mask, self.sparsity_weight))
        return losses
