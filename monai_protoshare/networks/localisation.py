"""Localisation component: add-on module (G_s) and mapping module (M_s), App. A.2, eq. (12)-(13)."""

from __future__ import annotations

from statistics import NormalDist

import torch
from monai.utils import look_up_option
from torch import nn

from .layers import PointwiseConv3d

__all__ = ["MAPPING_MODES", "AddOn", "MappingHead"]

# "none": no mapping module (ProtoPNet); "plain": sigmoid maps (XProtoNet); "minmax_soft": min-max over
# (prototypes, space) then soft mask (MProtoNet); "l1_soft": sigmoid, soft mask, per-prototype spatial L1
# normalisation (UM-ProtoShare, eq. 12-13).
MAPPING_MODES = ("none", "plain", "minmax_soft", "l1_soft")


class AddOn(nn.Sequential):
    """``G_s = act(BN(conv1x1(ReLU(BN(conv1x1(F_s))))))``: (B, C_s, …) → (B, E, …), App. A.2.

    Args:
        in_channels: C_s.
        embedding_dim: E (128 in the paper).
        activation: ``"relu"`` (paper text) or ``"sigmoid"`` (the MProtoNet-style final activation of the
            authors' code, kept as an option).
    """

    def __init__(self, in_channels: int, embedding_dim: int = 128, activation: str = "relu") -> None:
        activation = look_up_option(activation, ("relu", "sigmoid"))
        super().__init__()
        self.conv1 = PointwiseConv3d(in_channels, embedding_dim, bias=False)
        self.bn1 = nn.BatchNorm3d(embedding_dim)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = PointwiseConv3d(embedding_dim, embedding_dim, bias=False)
        self.bn2 = nn.BatchNorm3d(embedding_dim)
        self.act2 = nn.ReLU(inplace=True) if activation == "relu" else nn.Sigmoid()


class MappingHead(nn.Module):
    """Per-prototype attention maps from F_s: conv1x1 → BN → ReLU → conv1x1 → BN, then a mode (App. A.2).

    Modes (``mode``):

    - ``"plain"`` (XProtoNet): ``M = sigmoid(M⁰)``.
    - ``"minmax_soft"`` (MProtoNet): ``m = ReLU(M⁰)`` min-max scaled per case over all prototypes and
      voxels, then the soft mask ``M = 1/(1 + exp(−w(m − σ)))``.
    - ``"l1_soft"`` (UM-ProtoShare): ``M¹ = 1/(1 + exp(−w(sigmoid(M⁰) − σ)))`` (eq. 12), then per prototype
      ``M = M¹ / (Σ_voxels M¹ + ε)`` (eq. 13), so every map sums to 1 over space.

    :meth:`forward` returns the mask before spatial normalisation (``M¹``, in [0, 1]; equal to M for the
    other modes), used by the mapping loss, and the attention map M used for descriptors and evidence.

    Args:
        in_channels: C_s of the features the maps are predicted from.
        num_prototypes: K_s.
        hidden_channels: width of the first 1×1 convolution (128 in the authors' code); also the
            feature dimension pooled by the Online-CAM head.
        mode: one of ``"plain"``, ``"minmax_soft"``, ``"l1_soft"``.
        softmask_weight, softmask_threshold: w = 10 and σ = 0.5 of eq. (12).
        eps: ε = 1e-6 of eq. (13).
        mask_prior: π, the fraction of voxels each map starts "on" (sigmoid(M⁰) > ½, i.e. M⁰ > 0). The last
            BN's shift starts at β₀ = Φ⁻¹(π), so with its standardised input z ~ N(0, 1) a fraction π of the
            voxels start above the soft mask's threshold (the prior-probability initialisation of focal-loss
            detectors). The paper is silent; 0.5 gives β₀ = 0, torch's default (DESIGN §5).

    Example:
        >>> head = MappingHead(16, num_prototypes=3, hidden_channels=8)
        >>> mask, attention = head(torch.randn(2, 16, 4, 4, 4))
        >>> attention.sum(dim=(2, 3, 4))  # each map sums to 1 over space (eq. 13)
        tensor([[1.0000, 1.0000, 1.0000],
                [1.0000, 1.0000, 1.0000]], grad_fn=<SumBackward1>)
    """

    def __init__(
        self,
        in_channels: int,
        num_prototypes: int,
        hidden_channels: int = 128,
        mode: str = "l1_soft",
        softmask_weight: float = 10.0,
        softmask_threshold: float = 0.5,
        eps: float = 1e-6,
        mask_prior: float = 0.5,
    ) -> None:
        super().__init__()
        if not 0.0 < mask_prior < 1.0:
            raise ValueError(f"mask_prior is a fraction of voxels in (0, 1); got {mask_prior}.")
        self.mode = look_up_option(mode, MAPPING_MODES[1:])
        self.softmask_weight = softmask_weight
        self.softmask_threshold = softmask_threshold
        self.eps = eps
        self.conv1 = PointwiseConv3d(in_channels, hidden_channels, bias=False)
        self.bn1 = nn.BatchNorm3d(hidden_channels)
        self.conv2 = PointwiseConv3d(hidden_channels, num_prototypes, bias=False)
        self.bn2 = nn.BatchNorm3d(num_prototypes)
        nn.init.constant_(self.bn2.bias, NormalDist().inv_cdf(mask_prior))

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU(BN(conv1(F_s))): (B, hidden_channels, H_s, W_s, D_s), the Online-CAM head's input."""
        return torch.relu(self.bn1(self.conv1(x)))

    def soft_mask(self, m: torch.Tensor) -> torch.Tensor:
        """Eq. (12): 1 / (1 + exp(−w (m − σ)))."""
        return torch.sigmoid(self.softmask_weight * (m - self.softmask_threshold))

    def maps_from_hidden(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask M¹, attention M), each (B, K_s, H_s, W_s, D_s), from :meth:`hidden`'s output."""
        raw = self.bn2(self.conv2(hidden))
        if self.mode == "plain":
            maps = torch.sigmoid(raw)
            return maps, maps
        if self.mode == "minmax_soft":
            m = torch.relu(raw)
            flat = m.flatten(1)
            low = flat.amin(dim=1).view(-1, 1, 1, 1, 1)
            span = (flat.amax(dim=1).view(-1, 1, 1, 1, 1) - low).clamp_min(1e-4)
            maps = self.soft_mask((m - low) / span)
            return maps, maps
        mask = self.soft_mask(torch.sigmoid(raw))
        return mask, mask / (mask.sum(dim=(2, 3, 4), keepdim=True) + self.eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.maps_from_hidden(self.hidden(x))
