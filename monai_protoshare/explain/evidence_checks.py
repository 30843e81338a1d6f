"""Sanity checks of the evidence (beyond the paper): model-parameter randomisation and prototype removal."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["prototype_removal_error", "randomised_copy", "spearman_correlation"]


def randomised_copy(network: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``network`` with every learnable layer re-initialised (Adebayo et al., 2018, cascade end point).

    Faithful evidence depends on the learned weights: maps of the trained model and of this copy must
    differ (low rank correlation). Prototypes are redrawn from U[0, 1) like at construction.
    """
    clone = copy.deepcopy(network)
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        for module in clone.modules():
            if hasattr(module, "reset_parameters") and module is not clone:
                module.reset_parameters()
        for vectors in getattr(getattr(clone, "prototypes", None), "vectors", []):
            with torch.no_grad():
                vectors.uniform_(0.0, 1.0)
    finally:
        torch.set_rng_state(generator_state)
    return clone.eval()


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n-1 along the last axis (ties broken by position; maps are continuous, ties are rare)."""
    order = x.argsort(dim=-1)
    ranks = torch.empty_like(order, dtype=torch.float64)
    ranks.scatter_(-1, order, torch.arange(x.shape[-1], dtype=torch.float64, device=x.device).expand_as(order))
    return ranks


def spearman_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per case of two maps (B, ...) -> (B,)."""
    ra, rb = _ranks(a.flatten(1)), _ranks(b.flatten(1))
    ra, rb = ra - ra.mean(dim=1, keepdim=True), rb - rb.mean(dim=1, keepdim=True)
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp_min(1e-12)


@torch.no_grad()
def prototype_removal_error(classifier: nn.Linear, similarities: torch.Tensor) -> torch.Tensor:
    """Largest deviation, over prototypes and classes, between the logit change when a prototype is removed
    (its similarity zeroed) and its contribution ``w_{c,k} S_k`` (eq. 31), per case (B,).

    Zero up to rounding when the logits are exactly the linear read-out of eq. (5): no hidden bias, no
    Online-CAM term, no other path from the image to the decision.
    """
    base = classifier(similarities)  # (B, C)
    num = similarities.shape[1]
    removed = similarities.unsqueeze(1).repeat(1, num, 1)  # (B, K, K): row k has prototype k removed
    removed.diagonal(dim1=1, dim2=2).zero_()
    change = base.unsqueeze(1) - classifier(removed)  # (B, K, C)
    contribution = similarities.unsqueeze(-1) * classifier.weight.t().unsqueeze(0)  # (B, K, C)
    return (change - contribution).abs().flatten(1).amax(dim=1)
