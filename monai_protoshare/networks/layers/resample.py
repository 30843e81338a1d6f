"""Trilinear resizing of feature maps that keeps their dtype and memory format on CUDA.

Under CUDA autocast, ``F.interpolate(mode="trilinear")`` runs in fp32 and on contiguous tensors: a bf16,
``channels_last_3d`` feature map is cast up and reordered, resized, then cast down and reordered again by
the next convolution. At the paper's size the decoder's two ×2 upsamplings and the mapping loss's rescaling
took as long as all the convolutions of a training step on an H100 (``benchmarks/README.md``).
:func:`separable_resize` computes the same values as three separable 1-D linear interpolations (a gather of
two neighbours and a ``lerp`` per axis), in the input's dtype and memory format; :func:`resize_trilinear`
uses it on CUDA and calls ``F.interpolate`` (:func:`separable_resize_reference`), whose channels-last
kernels are fast there, on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layout import is_channels_last
from .switch import reference_kernels

__all__ = ["linear_weights", "resize_trilinear", "separable_resize", "separable_resize_reference"]


def linear_weights(
    n_in: int,
    n_out: int,
    align_corners: bool,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Neighbours and weights of 1-D linear interpolation from ``n_in`` to ``n_out`` samples, as PyTorch.

    The source coordinate of output sample ``i`` is ``i (n_in - 1) / (n_out - 1)`` with ``align_corners``,
    else ``max((i + ½) n_in / n_out − ½, 0)`` (PyTorch's ``area_pixel_compute_source_index`` for an explicit
    output size), computed in ``dtype`` (PyTorch's kernels use fp32 for fp32 and lower precisions, fp64 for
    fp64).

    Returns:
        ``(lower, upper, weight)``: int64 indices (n_out,) of the two neighbours and the weight (n_out,) of
        the upper one, in ``dtype``, so that ``out[i] = (1 − weight[i]) x[lower[i]] + weight[i] x[upper[i]]``.
    """
    i = torch.arange(n_out, dtype=dtype, device=device)
    if align_corners:
        source = i * ((n_in - 1) / (n_out - 1)) if n_out > 1 else torch.zeros_like(i)
    else:
        source = ((i + 0.5) * (n_in / n_out) - 0.5).clamp_min(0)
    lower = source.floor().long().clamp_max(n_in - 1)
    upper = (lower + 1).clamp_max(n_in - 1)
    return lower, upper, source - lower


def separable_resize(x: torch.Tensor, size: list[int], align_corners: bool = False) -> torch.Tensor:
    """``F.interpolate(x, size, mode="trilinear")`` as three 1-D linear interpolations, in ``x``'s dtype.

    Each spatial axis is resized in turn on the tensor's physical (dense) order, so a ``channels_last_3d``
    input gives a ``channels_last_3d`` output and no layout copy is made. Under the reference switch:
    :func:`separable_resize_reference`.

    Args:
        x: (B, C, H, W, D), contiguous or ``channels_last_3d``.
        size: output (h, w, d).
        align_corners: as in ``F.interpolate``.

    Returns:
        (B, C, h, w, d), same dtype and memory format as ``x``.
    """
    if reference_kernels():
        return separable_resize_reference(x, size, align_corners)
    channels_last = x.dim() == 5 and is_channels_last(x)
    order = (0, 2, 3, 4, 1) if channels_last else (0, 1, 2, 3, 4)
    dense = x.permute(order) if channels_last else x.contiguous()
    for axis, n_out in zip((2, 3, 4), size):
        dim = order.index(axis)
        n_in = dense.shape[dim]
        if n_in == n_out:
            continue
        coordinate_dtype = torch.float64 if dense.dtype == torch.float64 else torch.float32
        lower, upper, weight = linear_weights(n_in, int(n_out), align_corners, dense.device, coordinate_dtype)
        shape = [1] * dense.dim()
        shape[dim] = int(n_out)
        weight = weight.to(dense.dtype).view(shape)
        dense = torch.lerp(dense.index_select(dim, lower), dense.index_select(dim, upper), weight)
    return dense.permute(0, 4, 1, 2, 3) if channels_last else dense


def separable_resize_reference(x: torch.Tensor, size: list[int], align_corners: bool = False) -> torch.Tensor:
    """The reference of :func:`separable_resize`: ``F.interpolate(x, size, mode="trilinear")``."""
    return F.interpolate(x, size=size, mode="trilinear", align_corners=align_corners)


def resize_trilinear(x: torch.Tensor, size: list[int], align_corners: bool = False) -> torch.Tensor:
    """Trilinear resize of feature maps (B, C, H, W, D) to ``size`` (h, w, d).

    CUDA: :func:`separable_resize` (input dtype and memory format kept); elsewhere, and under the reference
    switch, ``F.interpolate``. Both give the same values up to the rounding of the dtype. Exports (TorchScript,
    ONNX) take ``F.interpolate`` with ``size`` as given, so a traced size stays a function of the input.
    """
    if torch.jit.is_scripting():  # the kernel switch is a Python global, which TorchScript cannot read
        return F.interpolate(x, size=size, mode="trilinear", align_corners=align_corners)
    if torch.jit.is_tracing() or torch.compiler.is_exporting():  # int() would freeze the example input's sizes
        return F.interpolate(x, size=list(size), mode="trilinear", align_corners=align_corners)
    size = [int(n) for n in size]
    if x.is_cuda:
        return separable_resize(x, size, align_corners)
    return separable_resize_reference(x, size, align_corners)
