"""Clustering and separation losses on prototype similarities: class-agnostic (eq. 8-9) and class-specific (eq. 22-23)."""

from __future__ import annotations

import torch
from torch import nn

from .prototype_ownership import class_coefficients

__all__ = [
    "ClusteringSeparationLoss",
    "class_agnostic_clustering",
    "class_agnostic_separation",
    "class_specific_clustering",
    "class_specific_separation",
]


def _check(similarities: torch.Tensor, labels: torch.Tensor, coefficients: torch.Tensor) -> None:
    if similarities.ndim != 2 or coefficients.ndim != 2 or similarities.shape[1] != coefficients.shape[1]:
        raise ValueError(
            f"similarities (B, K) and coefficients (C, K) must share K; got {tuple(similarities.shape)} "
            f"and {tuple(coefficients.shape)}."
        )
    if labels.shape != similarities.shape[:1]:
        raise ValueError(f"labels must have shape (B,) = ({similarities.shape[0]},); got {tuple(labels.shape)}.")


def class_agnostic_clustering(similarities: torch.Tensor, labels: torch.Tensor, zeta: torch.Tensor) -> torch.Tensor:
    """Eq. (8): ``−Σ_k ζ_{y,k} S_k``, averaged over the batch.

    Args:
        similarities: S(x, P), (B, K_total).
        labels: y, (B,) class indices.
        zeta: soft coefficients ζ, (C, K_total) (:func:`soft_class_coefficients`).
    """
    _check(similarities, labels, zeta)
    return -(zeta[labels] * similarities).sum(dim=1).mean()


def class_agnostic_separation(similarities: torch.Tensor, labels: torch.Tensor, zeta: torch.Tensor) -> torch.Tensor:
    """Eq. (9): ``Σ_k (Σ_{c≠y} ζ_{c,k}) S_k``, averaged over the batch. Minimised with a positive λ_sep:
    S is a similarity, so pushing it down separates (the reference code's negative λ is for distances)."""
    _check(similarities, labels, zeta)
    other = zeta.sum(dim=0, keepdim=True) - zeta[labels]
    return (other * similarities).sum(dim=1).mean()


def class_specific_clustering(similarities: torch.Tensor, labels: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """Eq. (22): ``−max_{k: A_{y,k}=1} S_k``, averaged over the batch (the max runs over the prototypes the
    true class owns, as in ProtoPNet; a literal ``max(A·S)`` would clip negative similarities at 0)."""
    _check(similarities, labels, identity)
    own = identity[labels] > 0
    return -similarities.masked_fill(~own, float("-inf")).amax(dim=1).mean()


def class_specific_separation(similarities: torch.Tensor, labels: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """Eq. (23): ``max_{k: A_{y,k}=0} S_k``, averaged over the batch."""
    _check(similarities, labels, identity)
    own = identity[labels] > 0
    return similarities.masked_fill(own, float("-inf")).amax(dim=1).mean()


class ClusteringSeparationLoss(nn.Module):
    """(L_clst, L_sep) for a network: eq. (8)-(9) for shared prototypes, eq. (22)-(23) for class-specific ones.

    Example:
        >>> loss = ClusteringSeparationLoss()
        >>> clst, sep = loss(network, output.similarities, labels)  # doctest: +SKIP
    """

    def forward(
        self, network: nn.Module, similarities: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        coefficients = class_coefficients(network).to(similarities.dtype)
        if getattr(network, "ownership", "shared") == "class_specific":
            return (
                class_specific_clustering(similarities, labels, coefficients),
                class_specific_separation(similarities, labels, coefficients),
            )
        return (
            class_agnostic_clustering(similarities, labels, coefficients),
            class_agnostic_separation(similarities, labels, coefficients),
        )
