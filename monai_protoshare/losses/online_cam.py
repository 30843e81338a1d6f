"""Per-scale Online-CAM loss (MProtoNet; App. B.1): cross-entropy of the Online-CAM logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["OnlineCAMLoss", "online_cam_loss"]


def online_cam_loss(online_cam_logits: list[torch.Tensor], labels: torch.Tensor) -> list[torch.Tensor]:
    """Cross-entropy of each scale's Online-CAM logits (B, C) against labels (B,). One scalar per scale."""
    return [F.cross_entropy(logits, labels) for logits in online_cam_logits]


class OnlineCAMLoss(nn.Module):
    """Module form of :func:`online_cam_loss`, reading ``output.online_cam_logits``."""

    def forward(self, output, labels: torch.Tensor) -> list[torch.Tensor]:
        return online_cam_loss(output.online_cam_logits, labels)
