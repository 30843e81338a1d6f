"""3D quadruplet attention, the attention inside MAProtoNet's bottlenecks (Li et al., 2024)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["AttentionGate", "QuadrupletAttention"]


class AttentionGate(nn.Module):
    """``G(t) = t · sigmoid(BN(Conv3d(2→1, 7³)([max_1(t), mean_1(t)])))``: a gate pooled over dimension 1.

    Args:
        zero_init: start the BN scale at 0 (sigmoid(β) everywhere), as MAProtoNet does for its plain
            spatial gate.
    """

    def __init__(self, kernel_size: int = 7, zero_init: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm3d(1, momentum=0.01)
        if zero_init:
            nn.init.zeros_(self.bn.weight)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([t.amax(dim=1, keepdim=True), t.mean(dim=1, keepdim=True)], dim=1)
        return t * torch.sigmoid(self.bn(self.conv(pooled)))


class QuadrupletAttention(nn.Module):
    """Average of four gates, each pooling over one of (H, W, D, C) of a (B, C, H, W, D) tensor.

    The first three branches move one spatial axis into the channel slot (so the 7³ convolution runs
    over the remaining three axes, channels included), the fourth is a plain spatial gate.

    Example:
        >>> QuadrupletAttention()(torch.randn(2, 8, 6, 6, 4)).shape
        torch.Size([2, 8, 6, 6, 4])
    """

    # permutation moving the pooled axis to dim 1; every one is its own inverse
    _PERMUTATIONS = ((0, 2, 1, 3, 4), (0, 3, 2, 1, 4), (0, 4, 2, 3, 1))

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.axis_gates = nn.ModuleList(AttentionGate(kernel_size) for _ in self._PERMUTATIONS)
        self.spatial_gate = AttentionGate(kernel_size, zero_init=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.spatial_gate(x)
        for perm, gate in zip(self._PERMUTATIONS, self.axis_gates):
            out = out + gate(x.permute(perm)).permute(perm)
        return out / 4.0
