"""Encoder-decoder fusion B_s (eq. 11; App. E.3) and MAProtoNet's multi-scale feature fusion."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import (
    box_mean_pool3d,
    box_mean_pool3d_reference,
    reference_kernels,
    resize_trilinear,
    with_gradient_layout,
)

__all__ = ["ConcatFusion", "GatedFusion", "MultiScaleFeatureFusion"]


class GatedFusion(nn.Module):
    """Per-channel gated fusion, eq. (11): ``F_s = α_s ⊙ f_s + (1 − α_s) ⊙ f̃_s``.

    ``α_s = sigmoid(conv1x1(ReLU(conv1x1(GAP([f_s, f̃_s])))))`` with hidden width ``max(C/8, 4)`` and
    biases (the authors' code; the paper is silent on the width), so α is per channel and per case.

    Example:
        >>> fuse = GatedFusion(16)
        >>> fuse(torch.randn(2, 16, 4, 4, 4), torch.randn(2, 16, 4, 4, 4)).shape
        torch.Size([2, 16, 4, 4, 4])
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(channels // 8, 4)
        self.gate = nn.Sequential(
            nn.Conv3d(2 * channels, hidden, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv3d(hidden, channels, kernel_size=1),
            nn.Sigmoid(),
        )

    def gates(self, encoder: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
        """α_s of shape (B, C, 1, 1, 1), in (0, 1)."""
        # GAP of the concatenation == concatenation of the GAPs: skips a full-resolution copy
        pooled = torch.cat([encoder.mean(dim=(2, 3, 4), keepdim=True), decoder.mean(dim=(2, 3, 4), keepdim=True)], 1)
        return self.gate(pooled)

    def forward(self, encoder: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
        """``f̃ + α (f − f̃)``: one ``torch.lerp`` pass (no full-size temporaries, 0.6-0.85× the time forward +
        backward at the fine scale on CPU); the formula written out under the reference switch and in exports."""
        alpha = self.gates(encoder, decoder)
        if torch.jit.is_scripting():  # the switch is a Python global, which TorchScript cannot read
            return decoder + alpha * (encoder - decoder)
        if torch.jit.is_tracing() or reference_kernels() or not encoder.dtype == decoder.dtype == alpha.dtype:
            return decoder + alpha * (encoder - decoder)  # lerp takes one dtype (autocast may mix them)
        return torch.lerp(decoder, encoder, alpha)


class ConcatFusion(nn.Module):
    """Ablation C (App. E.3): channel concatenation then a linear 1×1×1 projection back to C_s."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.project = nn.Conv3d(2 * channels, channels, kernel_size=1, bias=False)

    def forward(self, encoder: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([encoder, decoder], dim=1))


class MultiScaleFeatureFusion(nn.Module):
    """MAProtoNet's fusion of the stem and layer1 features before its mapping module.

    ``concat[AvgPool3d(3, 2, 1)(s1), MaxPool3d(3, 2, 1)(s1), s2]``: (B, 2·C1 + C2, h2, w2, d2). The
    pooled stem is resized to s2's exact size, so no input size can make the two disagree (the public
    code crashes at 4×64×64×48 when its mapping loss rescales by 0.875). On CPU the average pooling runs as
    :func:`.layers.box_mean_pool3d` (the same values; PyTorch's copies the channels-last stem first), and the
    max-pooled stem gets its gradient in its own layout (:func:`.layers.with_gradient_layout`).
    """

    def __init__(self, channels: tuple[int, int]) -> None:
        super().__init__()
        self.out_channels = 2 * channels[0] + channels[1]

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        separable = fine.device.type == "cpu" and not torch.jit.is_tracing()  # a traced export keeps the aten op
        average = box_mean_pool3d(fine) if separable else box_mean_pool3d_reference(fine)
        pooled = [average, with_gradient_layout(F.max_pool3d(fine, 3, 2, 1))]  # a gradient sliced from the cat
        if pooled[0].shape[2:] != coarse.shape[2:]:
            pooled = [resize_trilinear(p, coarse.shape[2:]) for p in pooled]
        return torch.cat(pooled + [coarse], dim=1)
