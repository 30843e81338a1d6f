"""The network and batches shared by ``test_distributed.py`` and the ranks it launches."""

import torch
from torch import nn


def tiny_network() -> nn.Sequential:
    """Conv -> BN -> ReLU -> conv, 2 input channels, ``(B, 1, D-2, H-2, W-2)`` out."""
    return nn.Sequential(nn.Conv3d(2, 4, 3), nn.BatchNorm3d(4), nn.ReLU(), nn.Conv3d(4, 1, 1))


def batch_of(rank: int) -> torch.Tensor:
    """Rank ``rank``'s batch, ``(2, 2, 6, 6, 6)``."""
    return torch.randn(2, 2, 6, 6, 6, generator=torch.Generator().manual_seed(100 + rank))
