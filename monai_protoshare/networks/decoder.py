"""Lightweight UNet-style decoder: a bottleneck and trilinear decoder blocks, no skips (App. A.1, Fig. 3)."""

from __future__ import annotations

import torch
from torch import nn

from .layers import resize_trilinear

__all__ = ["ConvBlock", "UNetStyleDecoder"]


class ConvBlock(nn.Sequential):
    """3×3×3 convolution (no bias) → BN → ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        )


class UNetStyleDecoder(nn.Module):
    """Decoder features f̃_s matched in shape to the encoder's f_s (App. A.1).

    The bottleneck Q3 maps the coarsest encoder feature to f̃_3; each decoder block then upsamples
    trilinearly to the next finer encoder scale's size and applies ConvBlock(C_{s+1} → C_s).
    Only the coarsest feature enters the decoder (no skip connections).

    Args:
        channels: encoder channels per scale, fine to coarse, e.g. (64, 256, 512).

    Example:
        >>> dec = UNetStyleDecoder((16, 64, 128))
        >>> feats = [torch.zeros(1, 16, 32, 32, 24), torch.zeros(1, 64, 16, 16, 12), torch.zeros(1, 128, 8, 8, 6)]
        >>> [f.shape[1] for f in dec(feats)]
        [16, 64, 128]
    """

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.bottleneck = ConvBlock(channels[-1], channels[-1])
        # blocks[i] produces scale i from scale i + 1
        self.blocks = nn.ModuleList(ConvBlock(channels[i + 1], channels[i]) for i in range(len(channels) - 1))
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, encoder_features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Args: encoder features fine to coarse. Returns decoder features f̃_s, fine to coarse, same shapes."""
        decoded = [self.bottleneck(encoder_features[-1])]
        for i in range(len(self.blocks) - 1, -1, -1):
            # TorchScript indexes a ModuleList by literals only (a loop over it unrolls): look block i up
            for j, block in enumerate(self.blocks):
                if j == i:
                    # explicit target size: odd sizes never drift from the encoder's grid
                    up = resize_trilinear(decoded[0], encoder_features[i].shape[2:])
                    decoded.insert(0, block(up))
        return decoded
