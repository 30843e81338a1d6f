"""1×1×1 convolutions as matrix products over the tensor as it is stored, and the heads' spatial contractions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layout import is_channels_last
from .switch import reference_kernels

__all__ = [
    "PointwiseConv3d",
    "pointwise_conv3d",
    "pointwise_conv3d_reference",
    "spatial_contraction",
    "spatial_contraction_reference",
    "spatial_logsumexp",
    "spatial_logsumexp_reference",
]


def pointwise_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv3d(x, weight, bias)`` for a 1×1×1 kernel: ``y[b, o, v] = Σ_i W[o, i] x[b, i, v] + bias[o]``.

    On a ``channels_last_3d`` ``x`` the voxels are rows of a (B·H·W·D, C_in) matrix as stored, so the convolution is
    one ``F.linear`` (a GEMM) with a ``channels_last_3d`` result, and its backward two GEMMs. PyTorch's CPU
    ``conv3d`` takes its unvectorised ``slow_conv3d`` path for 1×1×1 kernels with a batch under 16 on one thread,
    copying a channels-last input to the contiguous layout first and returning a contiguous result (which every
    later elementwise op and batch norm then mixes with channels-last tensors): at the fine scale of the paper's
    size (1×64×64×64×48 → 128 channels, one thread) an add-on's forward + backward took 0.60-0.75× the time this
    way (``benchmarks/README.md``). Only that case takes the GEMM: with more threads or a larger batch PyTorch
    runs oneDNN, as fast; other layouts, CUDA and exports use ``F.conv3d``; under the reference switch,
    :func:`pointwise_conv3d_reference`.

    Args:
        x: (B, C_in, H, W, D).
        weight: (C_out, C_in, 1, 1, 1).
        bias: optional (C_out,).

    Returns:
        (B, C_out, H, W, D), ``channels_last_3d`` when ``x`` is.
    """
    if torch.jit.is_scripting():  # the switch is a Python global, which TorchScript cannot read
        return pointwise_conv3d_reference(x, weight, bias)
    if torch.jit.is_tracing() or reference_kernels() or not _slow_conv3d_case(x):
        return pointwise_conv3d_reference(x, weight, bias)
    return F.linear(x.permute(0, 2, 3, 4, 1), weight.flatten(1), bias).permute(0, 4, 1, 2, 3)


def _slow_conv3d_case(x: torch.Tensor) -> bool:
    """Whether PyTorch's CPU ``conv3d`` takes ``slow_conv3d`` for a 1×1×1 kernel on ``x``: one thread and a batch
    under 16 (oneDNN otherwise, which keeps the channels-last layout and is as fast as the GEMM), channels-last."""
    return x.device.type == "cpu" and torch.get_num_threads() == 1 and x.shape[0] < 16 and is_channels_last(x)


def pointwise_conv3d_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The reference of :func:`pointwise_conv3d`: ``F.conv3d(x, weight, bias)``."""
    return F.conv3d(x, weight, bias)


class PointwiseConv3d(nn.Conv3d):
    """``nn.Conv3d(in_channels, out_channels, kernel_size=1)`` computed by :func:`pointwise_conv3d`.

    The same parameters (names, shapes, initialisation) and state dict as the ``nn.Conv3d`` it replaces.

    Example:
        >>> conv = PointwiseConv3d(4, 2, bias=False)
        >>> x = torch.randn(1, 4, 3, 3, 3).contiguous(memory_format=torch.channels_last_3d)
        >>> torch.allclose(conv(x), torch.nn.functional.conv3d(x, conv.weight), atol=1e-6)
        True
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pointwise_conv3d(x, self.weight, self.bias)


def spatial_contraction(maps: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """``out[b, k, e] = Σ_v maps[b, k, v] features[b, e, v]`` over the voxels v of two (B, ·, H, W, D) tensors.

    One batched matrix product over both tensors as they are stored: a ``channels_last_3d`` tensor is a (B, V, C)
    matrix, a contiguous one a (B, C, V) matrix, and ``bmm`` reads either orientation, so neither is copied
    (``flatten(2)`` of a channels-last tensor copies it, here the 128-channel fine-scale add-on features, and
    autograd copies the gradient back). Under the reference switch, :func:`spatial_contraction_reference`.

    Args:
        maps: (B, K, H, W, D).
        features: (B, E, H, W, D).

    Returns:
        (B, K, E).
    """
    if torch.jit.is_scripting():
        return spatial_contraction_reference(maps, features)
    if torch.jit.is_tracing() or reference_kernels():
        return spatial_contraction_reference(maps, features)
    return torch.bmm(_as_matrix(maps), _as_matrix(features).transpose(1, 2))


def spatial_contraction_reference(maps: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """The reference of :func:`spatial_contraction`: ``einsum("bkv,bev->bke")`` of the flattened tensors."""
    return torch.einsum("bkv,bev->bke", maps.flatten(2), features.flatten(2))


def spatial_logsumexp(x: torch.Tensor) -> torch.Tensor:
    """``log Σ_v exp(x[b, c, v])`` over the voxels of a (B, C, H, W, D) tensor: (B, C).

    Reduces a ``channels_last_3d`` ``x`` over the voxel rows of its stored (B, V, C) matrix, a view (``flatten(2)``
    copies it, and its backward copies the gradient back). Under the reference switch,
    :func:`spatial_logsumexp_reference`.
    """
    if torch.jit.is_scripting():
        return spatial_logsumexp_reference(x)
    if torch.jit.is_tracing() or reference_kernels():
        return spatial_logsumexp_reference(x)
    return torch.logsumexp(_as_matrix(x), dim=-1)


def spatial_logsumexp_reference(x: torch.Tensor) -> torch.Tensor:
    """The reference of :func:`spatial_logsumexp`: ``torch.logsumexp(x.flatten(2), -1)``."""
    return torch.logsumexp(x.flatten(2), dim=-1)


def _as_matrix(x: torch.Tensor) -> torch.Tensor:
    """(B, C, V) of a 5-D ``x`` without a copy: a transposed view of the stored (B, V, C) when channels-last."""
    if is_channels_last(x):
        return x.permute(0, 2, 3, 4, 1).flatten(1, 3).transpose(1, 2)
    return x.flatten(2)
