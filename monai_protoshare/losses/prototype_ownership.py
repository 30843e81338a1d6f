"""Class-prototype coefficients: soft ζ from the classifier (eq. 6-7) or the hard ownership matrix A (App. B.2)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["class_coefficients", "soft_class_coefficients"]


def soft_class_coefficients(weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. (7): ``ζ_{c,k} = ReLU(w_{c,k}) / (Σ_c' ReLU(w_{c',k}) + ε)``, detached from the graph.

    The classifier weights are the Grad-CAM-style importance weights of the prototypes (eq. 6); ζ is a
    soft ownership distribution over classes for every prototype, all zeros when a prototype has no
    positive weight (so it then receives no clustering or separation gradient, eq. 8-9).

    Args:
        weight: classifier weights w_cls, (C, K_total).
        eps: ε = 1e-6.

    Returns:
        ζ, (C, K_total), no gradient.

    Example:
        >>> soft_class_coefficients(torch.tensor([[1.0, -1.0], [3.0, -2.0]]))
        tensor([[0.2500, 0.0000],
                [0.7500, 0.0000]])
    """
    positive = torch.relu(weight.detach())
    return positive / (positive.sum(dim=0, keepdim=True) + eps)


def class_coefficients(network: nn.Module) -> torch.Tensor:
    """ζ of a network: the ownership buffer A for class-specific prototypes, eq. (7) for shared ones. (C, K)."""
    if getattr(network, "ownership", "shared") == "class_specific":
        return network.prototype_class_identity
    return soft_class_coefficients(network.classifier.weight)
