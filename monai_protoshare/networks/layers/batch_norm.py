"""A one-channel ``BatchNorm3d`` as whole-tensor reductions (cuDNN reduces a channel within one thread block)."""

from __future__ import annotations

import torch
from torch import nn

from .switch import reference_kernels

__all__ = ["single_channel_batch_norm", "single_channel_batch_norm_reference"]


def single_channel_batch_norm(bn: nn.BatchNorm3d, x: torch.Tensor) -> torch.Tensor:
    """``bn(x)`` for a one-channel ``bn``, with whole-tensor reductions.

    The same values, gradients and running-statistics updates as ``nn.BatchNorm3d``: in training the batch's
    biased variance normalises and the unbiased one enters the running average (``momentum``, or the cumulative
    average when it is ``None``); in eval mode the running statistics normalise. Statistics and normalisation run
    in fp32 for half-precision inputs (as cuDNN's do); the result keeps ``x``'s dtype. cuDNN reduces each channel
    of a batch norm within one thread block, which for the gates' single channel of a whole batch dominated an
    attention's time on CUDA (``benchmarks/README.md``). Under the reference switch:
    :func:`single_channel_batch_norm_reference`.

    Args:
        bn: a ``BatchNorm3d(1)`` (its parameters and buffers are used and updated).
        x: (B, 1, H, W, D).
    """
    if reference_kernels():
        return single_channel_batch_norm_reference(bn, x)
    wide = x.to(torch.promote_types(x.dtype, torch.float32))
    if bn.training or not bn.track_running_stats:
        if bn.training and x.numel() < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(x.shape)}")
        var, mean = torch.var_mean(wide, correction=0)
        if bn.training and bn.track_running_stats:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
                bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
                bn.running_var.lerp_((var * (x.numel() / (x.numel() - 1))).to(bn.running_var.dtype), factor)
    else:
        mean, var = bn.running_mean, bn.running_var
    normalised = (wide - mean) * torch.rsqrt(var + bn.eps)
    if bn.affine:
        normalised = normalised * bn.weight + bn.bias
    return normalised.to(x.dtype)


def single_channel_batch_norm_reference(bn: nn.BatchNorm3d, x: torch.Tensor) -> torch.Tensor:
    """The reference of :func:`single_channel_batch_norm`: ``bn(x)``, the module's own forward."""
    return bn(x)
