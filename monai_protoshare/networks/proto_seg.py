"""Prototype segmentation with scale- and class-independent prototypes (seed 001: ProtoSeg, ScaleProtoSeg, PIP-Net).

Pipeline, for an input x (B, 4, H, W, D) and the project's encoder (:class:`ResNetEncoder`, deepest scale f of
stride t, (B, C, H/t, W/t, D/t)):

1. Shared-weight ASPP (:class:`SharedWeightASPP`): ONE 3×3×3 convolution W (C → E) applied at every dilation
   d ∈ ``dilations``, then one BatchNorm and ReLU: z_s = ReLU(BN(W *_d f)), (B, S, E, h, w, d). The branches differ
   only in dilation, so one prototype bank is compared at every scale (seed 001, "ASPP: shared weights").
2. Class-independent prototypes p_k (K, E): per-voxel cosine similarity sim_{s,k}(v) = cos(z_s(v), p_k), pooled over
   scales (``scale_pooling``: max, the scale where the prototype matches best, or mean), then ReLU so that every
   similarity is presence evidence ≥ 0 (PIP-Net's presence scores are ≥ 0 too): S_k(v), (B, K, h, w, d).
3. Non-negative sparse last layer (PIP-Net's ``NonNegLinear``: the weights used are ReLU(W_raw), so they are ≥ 0
   whatever the optimiser does, and L1 drives them to exact zeros): logit_r(v) = Σ_k ReLU(W_raw)_{r,k} S_k(v) + b_r for
   the regions r of MONAI's ``ConvertToMultiChannelBasedOnBratsClassesd`` in its channel order [TC, WT, ET]
   (sigmoid per region). One prototype may serve several regions.
4. Logits upsampled trilinearly to the input, (B, R, H, W, D). Upsampling is linear, so the upsampled logit is
   still Σ_k w_{r,k} up(S_k) + b_r and the per-voxel contributions w_{r,k} up(S_k)(v) explain it exactly
   (:meth:`ProtoSegNetwork.explain_voxel`).

Seed-silent choices: dilations (1, 2, 3) and max pooling over scales (config values), ReLU on the cosine, prototypes
initialised N(0, 1), last-layer weights N(1, 0.1) (PIP-Net's initialisation) and bias log(π / (1 − π)) for a prior
foreground probability π = ``prior_probability`` (config value; RetinaNet's prior initialisation): tumour regions
are a few % of the volume, and with small initial weights and a zero bias a tiny synthetic run still predicted no
tumour after 50 steps (whole-tumour Dice 0.03).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.utils import look_up_option
from torch import nn

from .backbone import _format_shape
from .encoder import ResNetEncoder

__all__ = ["BRATS_REGIONS", "ProtoSegNetwork", "ProtoSegOutput", "SharedWeightASPP", "VoxelExplanation"]

#: Output channels, MONAI's ``ConvertToMultiChannelBasedOnBratsClassesd`` order: tumour core, whole tumour, enhancing.
BRATS_REGIONS = ("TC", "WT", "ET")
SCALE_POOLINGS = ("max", "mean")


class SharedWeightASPP(nn.Module):
    """Atrous spatial pyramid whose branches are one convolution applied at several dilations (seed 001).

    Args:
        in_channels: C of the encoder features.
        out_channels: E, the latent (prototype) dimension.
        dilations: one dilation per branch (scale); the kernel is 3×3×3, padded to keep the grid.

    Example:
        >>> aspp = SharedWeightASPP(8, 4, dilations=(1, 2))
        >>> aspp(torch.zeros(1, 8, 6, 6, 4)).shape
        torch.Size([1, 2, 4, 6, 6, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, dilations: tuple[int, ...] = (1, 2, 3)) -> None:
        super().__init__()
        self.dilations = tuple(int(d) for d in dilations)
        if not self.dilations or min(self.dilations) < 1:
            raise ValueError(f"dilations must be positive integers, e.g. (1, 2, 3); got {dilations}.")
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3, 3))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.norm = nn.BatchNorm3d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, C, h, w, d). Returns z (B, S, E, h, w, d), scales in ``dilations`` order."""
        branches = [F.relu(self.norm(F.conv3d(x, self.weight, padding=d, dilation=d))) for d in self.dilations]
        return torch.stack(branches, dim=1)


@dataclass
class ProtoSegOutput:
    """Everything the losses, the push and the explanations need from one forward.

    Attributes:
        logits: (B, R, H, W, D) region logits on the input grid.
        similarities: (B, K, h, w, d) S_k, scale-pooled ReLU(cosine) on the feature grid.
        scale_similarities: (B, S, K, h, w, d) cosine of every scale before pooling.
        features: (B, S, E, h, w, d) the ASPP's latent features z_s (what the push copies).
    """

    logits: torch.Tensor
    similarities: torch.Tensor
    scale_similarities: torch.Tensor
    features: torch.Tensor


@dataclass
class VoxelExplanation:
    """Why one voxel got its region logits: its top prototypes and their contributions.

    Attributes:
        prototypes: (R, k) indices of the prototypes with the largest contribution to each region.
        contributions: (R, k) w_{r,k} · S_k(v) of those prototypes (they and the rest sum to logit - bias).
        similarities: (R, k) S_k(v) of those prototypes.
        logits: (R,) the voxel's region logits.
    """

    prototypes: torch.Tensor
    contributions: torch.Tensor
    similarities: torch.Tensor
    logits: torch.Tensor


class ProtoSegNetwork(nn.Module):
    """Interpretable BraTS region segmentation: encoder → shared-weight ASPP → prototypes → non-negative layer.

    ``forward`` returns the logits (B, R, H, W, D) (bundles and MONAI inferers need a tensor);
    :meth:`forward_features` returns :class:`ProtoSegOutput`.

    Args:
        in_channels: input sequences [T1, T1-CE, T2, FLAIR].
        num_regions: R, 3 for [TC, WT, ET].
        encoder_layers, encoder_widths: see :class:`ResNetEncoder`; the ASPP reads its deepest scale, so the
            number of stages sets the output stride (2 stages: 8, DeepLab v3's; 1 stage: 4).
        embedding_dim: E.
        num_prototypes: K, shared by all regions.
        dilations: the ASPP's dilations, one scale each.
        scale_pooling: ``"max"`` or ``"mean"`` over scales of each prototype's cosine.
        prior_probability: π, the foreground probability the last layer's bias starts at.

    Example:
        >>> net = ProtoSegNetwork(encoder_layers=(1,), encoder_widths=(8,), embedding_dim=8, num_prototypes=6)
        >>> net(torch.zeros(1, 4, 16, 16, 8)).shape
        torch.Size([1, 3, 16, 16, 8])
    """

    def __init__(
        self,
        in_channels: int = 4,
        num_regions: int = 3,
        encoder_layers: tuple[int, ...] = (3, 8),
        encoder_widths: tuple[int, ...] = (64, 128),
        embedding_dim: int = 128,
        num_prototypes: int = 32,
        dilations: tuple[int, ...] = (1, 2, 3),
        scale_pooling: str = "max",
        prior_probability: float = 0.02,
    ) -> None:
        super().__init__()
        if not 0 < prior_probability < 1:
            raise ValueError(f"prior_probability must be in (0, 1); got {prior_probability}.")
        if num_prototypes < 1 or num_regions < 1 or embedding_dim < 1:
            raise ValueError(
                f"num_prototypes, num_regions and embedding_dim must be >= 1; got {num_prototypes}, {num_regions}, "
                f"{embedding_dim}."
            )
        self.scale_pooling = look_up_option(scale_pooling, SCALE_POOLINGS)
        self.encoder = ResNetEncoder(in_channels, encoder_layers, encoder_widths)
        self.aspp = SharedWeightASPP(self.encoder.out_channels[-1], embedding_dim, dilations)
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, embedding_dim))
        self.last_layer_weight = nn.Parameter(torch.normal(1.0, 0.1, size=(num_regions, num_prototypes)))
        prior = torch.tensor(float(prior_probability))
        self.last_layer_bias = nn.Parameter(torch.logit(prior).repeat(num_regions))

    @property
    def stride(self) -> int:
        """The encoder's output stride t: the input's spatial size must be a multiple of it."""
        return self.encoder.strides[-1]

    @property
    def num_prototypes(self) -> int:
        return self.prototypes.shape[0]

    @property
    def region_weights(self) -> torch.Tensor:
        """The non-negative weights used, ReLU(W_raw), (R, K) (PIP-Net's ``NonNegLinear``)."""
        return F.relu(self.last_layer_weight)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError naming what was expected when ``x`` cannot go through the network."""
        in_channels = self.encoder.in_channels
        if x.dim() != 5 or x.shape[1] != in_channels:
            raise ValueError(
                f"input must have shape (B, {in_channels}, H, W, D) with the sequences "
                f"[T1, T1-CE, T2, FLAIR] as channels; got {_format_shape(x.shape)}."
            )
        stride = self.stride
        for n in x.shape[2:]:
            if n % stride != 0:
                raise ValueError(
                    f"input spatial size {_format_shape(x.shape[2:])} must be a multiple of {stride} in every axis."
                )

    def similarity(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosine of every scale's features to every prototype, and the scale-pooled ReLU similarity.

        Args:
            features: z (B, S, E, h, w, d).

        Returns:
            ``(cosine (B, S, K, h, w, d), S_k (B, K, h, w, d))``.
        """
        z = F.normalize(features, dim=2)
        p = F.normalize(self.prototypes, dim=1)
        cosine = torch.einsum("bsehwd,ke->bskhwd", z, p)
        pooled = cosine.amax(dim=1) if self.scale_pooling == "max" else cosine.mean(dim=1)
        return cosine, F.relu(pooled)

    def region_logits(self, similarities: torch.Tensor) -> torch.Tensor:
        """logit_r = Σ_k ReLU(W_raw)_{r,k} S_k + b_r on any grid: (B, K, ...) -> (B, R, ...)."""
        logits = torch.einsum("bk...,rk->br...", similarities, self.region_weights)
        bias = self.last_layer_bias.view(1, -1)
        for _ in range(similarities.dim() - 2):
            bias = bias.unsqueeze(-1)
        return logits + bias

    def _forward_tensors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The forward as ``(logits, similarities, cosine, features)``: tensors, so that TorchScript compiles it."""
        self.check_input(x)
        features = self.aspp(self.encoder(x)[-1])
        cosine, similarities = self.similarity(features)
        logits = F.interpolate(self.region_logits(similarities), size=x.shape[2:], mode="trilinear")
        return logits, similarities, cosine, features

    def forward_features(self, x: torch.Tensor) -> ProtoSegOutput:
        """Args: x (B, 4, H, W, D). Returns :class:`ProtoSegOutput` (training, push, explanations; not scripted)."""
        return ProtoSegOutput(*self._forward_tensors(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, 4, H, W, D). Returns region logits (B, R, H, W, D); scriptable (``ckpt_export``)."""
        return self._forward_tensors(x)[0]

    @torch.no_grad()
    def explain_voxel(self, x: torch.Tensor, voxel: tuple[int, int, int], top_k: int = 3) -> VoxelExplanation:
        """Top prototypes of one input voxel and their contributions w_{r,k} · up(S_k)(v) to each region.

        Put the network in eval mode first (batch statistics would depend on the case).

        Args:
            x: one case (1, 4, H, W, D).
            voxel: (i, j, k) on the input grid.
            top_k: prototypes listed per region.
        """
        if x.shape[0] != 1:
            raise ValueError(f"explain_voxel takes one case (1, 4, H, W, D); got a batch of {x.shape[0]}.")
        output = self.forward_features(x)
        up = F.interpolate(output.similarities, size=x.shape[2:], mode="trilinear")[0][(slice(None), *voxel)]  # (K,)
        contributions = self.region_weights * up  # (R, K)
        values, indices = contributions.topk(min(top_k, self.num_prototypes), dim=1)
        logits = output.logits[0][(slice(None), *voxel)]
        return VoxelExplanation(indices, values, up[indices], logits)
