"""3D quadruplet attention, the attention inside MAProtoNet's bottlenecks (Li et al., 2024)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AttentionGate", "QuadrupletAttention", "single_output_conv3d"]


def single_output_conv3d(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.conv3d(x, weight, padding=k // 2)`` for one output channel, as 2-D convolutions of the depth slices.

    Every depth slice is convolved in 2-D with the ``k`` depth taps of the kernel as ``k`` output channels, and
    output slice ``d`` sums tap ``j`` of slice ``d + j − k // 2``. The values are the same (up to the order of
    the fp32 sums); on CPU, oneDNN runs the 2→1-channel 7³ convolution of MAProtoNet's gates 4-5× slower than
    these 2→7-channel 2-D ones, forward and backward.

    Args:
        x: (B, C, H, W, D).
        weight: (1, C, k, k, k), ``k`` odd.

    Returns:
        (B, 1, H, W, D).
    """
    batch, channels, height, width, depth = x.shape
    k = weight.shape[-1]
    slices = x.permute(0, 4, 1, 2, 3).reshape(batch * depth, channels, height, width)
    taps = F.conv2d(slices, weight[0].permute(3, 0, 1, 2), padding=k // 2).view(batch, depth, k, height, width)
    taps = F.pad(taps, (0, 0, 0, 0, 0, 0, k // 2, k // 2))  # zero slices beyond both ends of the depth axis
    out = sum(taps[:, j : j + depth, j] for j in range(k))
    return out.permute(0, 2, 3, 1).unsqueeze(1)


class AttentionGate(nn.Module):
    """``G(t) = t · sigmoid(BN(Conv3d(2→1, 7³)([max_1(t), mean_1(t)])))``: a gate pooled over dimension 1.

    On CPU the convolution runs as :func:`single_output_conv3d` (same values, several times faster there); on
    CUDA as cuDNN's ``conv3d``. Its weight stays an ``nn.Conv3d``'s, so checkpoints are unchanged.

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
        logits = self.conv(pooled) if pooled.is_cuda else single_output_conv3d(pooled, self.conv.weight)
        return t * torch.sigmoid(self.bn(logits))


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
