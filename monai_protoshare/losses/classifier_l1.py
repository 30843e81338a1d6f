"""Last-layer L1 regularisation (ProtoPNet; eq. 21)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ClassifierL1Loss", "classifier_l1_loss"]


def classifier_l1_loss(weight: torch.Tensor, class_identity: torch.Tensor | None = None) -> torch.Tensor:
    """``‖W‖₁`` over all weights (shared prototypes), or over the wrong-class weights ``‖W ⊙ (1 − A)‖₁``
    (class-specific prototypes, A the ownership matrix).

    Args:
        weight: classifier weights (C, K).
        class_identity: A (C, K) or None.
    """
    if class_identity is not None:
        weight = weight * (1.0 - class_identity)
    return weight.abs().sum()


class ClassifierL1Loss(nn.Module):
    """Module form of :func:`classifier_l1_loss` for a network's classifier."""

    def forward(self, network: nn.Module) -> torch.Tensor:
        identity = network.prototype_class_identity if network.ownership == "class_specific" else None
        return classifier_l1_loss(network.classifier.weight, identity)
