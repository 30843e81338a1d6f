"""Losses of the prototype segmentation network (issue 23; seed 001: ProtoSeg, PIP-Net).

L = L_seg + λ_L1 · ‖ReLU(W_raw)‖₁ + λ_J · L_J, with

- L_seg: MONAI ``DiceCELoss(sigmoid=True)``: soft Dice plus binary cross-entropy on each region's logit (the
  regions overlap, so sigmoid per region, not softmax). Dice + BCE (MONAI's BraTS recipe) rather than DiceFocal:
  the whole tumour is a few % of the volume, which Dice handles, and BCE gives every voxel a gradient, including
  the easy background the focal term down-weights. DiceFocal was not compared; ``lambda_dice`` / ``lambda_ce``
  weight the two terms.
- L1 on the non-negative last-layer weights (PIP-Net): sparse region evidence.
- L_J, ProtoSeg's diversity term: for each image, each prototype's activation distribution over the voxels
  v_k = softmax_v(S_k(v) / τ), and the mean over pairs i < j of exp(−D_J(v_i, v_j)), D_J the Jeffreys
  (symmetric KL) divergence KL(v_i ‖ v_j) + KL(v_j ‖ v_i). ProtoSeg compares the prototypes of one class over
  that class's pixels; our prototypes are class-independent, so all prototypes are compared over all voxels of
  the feature grid. τ (``temperature``) is seed-silent: cosine-based scores lie in [0, 1], and τ = 0.1 spreads
  their softmax enough for the divergence to move.
"""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss
from torch import nn

from monai_protoshare.networks.proto_seg import ProtoSegOutput

__all__ = ["ProtoSegLoss", "jeffreys_diversity_loss"]


def jeffreys_diversity_loss(similarities: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """ProtoSeg's L_J: mean over images and prototype pairs i < j of exp(−D_J(v_i, v_j)).

    Args:
        similarities: S (B, K, h, w, d), or any (B, K, ...).
        temperature: τ of v_k = softmax over voxels of S_k / τ.

    Returns:
        A scalar in (0, 1]; 1 when all prototypes activate alike, towards 0 when they activate apart.

    Example:
        >>> jeffreys_diversity_loss(torch.ones(1, 3, 2, 2, 2))  # identical distributions
        tensor(1.)
    """
    if similarities.ndim < 3 or similarities.shape[1] < 2:
        raise ValueError(f"similarities must be (B, K >= 2, ...); got {tuple(similarities.shape)}.")
    log_v = torch.log_softmax(similarities.flatten(2) / temperature, dim=2)  # (B, K, V)
    v = log_v.exp()
    # KL(v_i || v_j) = Σ v_i log v_i − Σ v_i log v_j for every pair at once: (B, K, K)
    neg_entropy = (v * log_v).sum(dim=2)
    cross = torch.einsum("biv,bjv->bij", v, log_v)
    kl = neg_entropy[:, :, None] - cross
    jeffreys = kl + kl.transpose(1, 2)
    i, j = torch.triu_indices(v.shape[1], v.shape[1], offset=1, device=v.device)
    return torch.exp(-jeffreys[:, i, j]).mean()


class ProtoSegLoss(nn.Module):
    """L_seg + λ_L1 ‖ReLU(W_raw)‖₁ + λ_J L_J for a :class:`~monai_protoshare.networks.proto_seg.ProtoSegNetwork`.

    Args:
        region_weights: a callable returning the network's non-negative last-layer weights (R, K) (e.g.
            ``lambda: network.region_weights``), so the loss does not own the network.
        lambda_l1: λ_L1.
        lambda_diversity: λ_J.
        temperature: τ of :func:`jeffreys_diversity_loss`.
        lambda_dice, lambda_ce: weights of the Dice and BCE terms of MONAI's ``DiceCELoss``.

    Example:
        >>> loss = ProtoSegLoss(lambda: net.region_weights)
        >>> terms = loss(net.forward_features(x), target)  # target (B, 3, H, W, D) in {0, 1}
        >>> terms["loss"].backward()
    """

    def __init__(
        self,
        region_weights,
        lambda_l1: float = 1e-4,
        lambda_diversity: float = 0.25,
        temperature: float = 0.1,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
    ) -> None:
        super().__init__()
        self.region_weights = region_weights
        self.lambda_l1, self.lambda_diversity, self.temperature = lambda_l1, lambda_diversity, temperature
        self.segmentation = DiceCELoss(sigmoid=True, lambda_dice=lambda_dice, lambda_ce=lambda_ce)

    def forward(self, output: ProtoSegOutput, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Args: output of ``forward_features``; target (B, R, H, W, D) in {0, 1}. Returns the terms and ``loss``."""
        if target.shape != output.logits.shape:
            raise ValueError(
                f"target must be the region masks {tuple(output.logits.shape)} (B, R, H, W, D); "
                f"got {tuple(target.shape)}."
            )
        terms = {
            "seg": self.segmentation(output.logits, target.to(output.logits.dtype)),
            "l1": self.region_weights().abs().sum(),
            "diversity": jeffreys_diversity_loss(output.similarities, self.temperature),
        }
        terms["loss"] = terms["seg"] + self.lambda_l1 * terms["l1"] + self.lambda_diversity * terms["diversity"]
        return terms
