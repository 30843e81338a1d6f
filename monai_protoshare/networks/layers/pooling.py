"""``avg_pool3d(x, 3, stride=2, padding=1)`` as separable strided sums over the tensor as it is stored."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layout import inverse_permutation, stored_view
from .switch import reference_kernels

__all__ = ["box_mean_pool3d", "box_mean_pool3d_reference"]


def _every_other(x: torch.Tensor, dim: int, start: int) -> torch.Tensor:
    return x[(slice(None),) * dim + (slice(start, None, 2),)]


def _three_taps(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``out[i] = x[2i − 1] + x[2i] + x[2i + 1]`` along ``dim``, zeros outside: n → ⌈n / 2⌉ samples (contiguous)."""
    n = x.shape[dim]
    m = (n + 1) // 2
    shape = list(x.shape)
    shape[dim] = m
    out = x.new_empty(shape)
    even, odd = _every_other(x, dim, 0), _every_other(x, dim, 1)
    if n % 2:  # the last even sample has no odd sample after it
        out.narrow(dim, m - 1, 1).copy_(even.narrow(dim, m - 1, 1))
    torch.add(even.narrow(dim, 0, n // 2), odd, out=out.narrow(dim, 0, n // 2))
    out.narrow(dim, 1, m - 1).add_(odd.narrow(dim, 0, m - 1))
    return out


def _three_taps_transposed(g: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    """The adjoint of :func:`_three_taps`: ``out[2i] = g[i]``, ``out[2i + 1] = g[i] + g[i + 1]``; ⌈n / 2⌉ → n."""
    m = g.shape[dim]
    shape = list(g.shape)
    shape[dim] = n
    out = g.new_empty(shape)
    odd = _every_other(out, dim, 1)
    _every_other(out, dim, 0).copy_(g)
    if n % 2 == 0:  # the last odd sample has no even sample after it
        odd.narrow(dim, m - 1, 1).copy_(g.narrow(dim, m - 1, 1))
    torch.add(g.narrow(dim, 0, m - 1), g.narrow(dim, 1, m - 1), out=odd.narrow(dim, 0, m - 1))
    return out


class _BoxMeanPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        dense, order = stored_view(x)
        axes = [order.index(a) for a in (2, 3, 4)]
        ctx.order, ctx.axes, ctx.sizes = order, axes, [dense.shape[a] for a in axes]
        for axis in axes:
            dense = _three_taps(dense, axis)
        return dense.div_(27).permute(inverse_permutation(order))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        dense = grad.permute(ctx.order).contiguous()
        for axis, n in zip(reversed(ctx.axes), reversed(ctx.sizes), strict=True):
            dense = _three_taps_transposed(dense, axis, n)
        return dense.div_(27).permute(inverse_permutation(ctx.order))


def box_mean_pool3d(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool3d(x, 3, stride=2, padding=1)`` (zero padding counted, so every window divides by 27).

    The 3³ box is separable: three passes of ``x[2i − 1] + x[2i] + x[2i + 1]``, one per spatial axis, as strided
    sums over ``x`` as it is stored (:func:`.layout.stored_view`), and a backward of the transposed passes. The
    output keeps ``x``'s memory format. PyTorch's CPU ``avg_pool3d`` copies a ``channels_last_3d`` input to the
    contiguous layout first (forward and backward), which this avoids (timings: ``benchmarks/README.md``). Each
    pass writes its output once: the first two taps summed into it, the third added. Under the reference switch
    and in a scripted export: :func:`box_mean_pool3d_reference`.

    Args:
        x: (B, C, H, W, D), floating point.

    Returns:
        (B, C, ⌈H/2⌉, ⌈W/2⌉, ⌈D/2⌉).

    Example:
        >>> box_mean_pool3d(torch.ones(1, 1, 4, 4, 4))[0, 0, :, :, 0]
        tensor([[0.2963, 0.4444],
                [0.4444, 0.6667]])
    """
    if torch.jit.is_scripting():  # an export: aten's pooling (TorchScript cannot compile the custom backward)
        return box_mean_pool3d_reference(x)
    if reference_kernels():
        return box_mean_pool3d_reference(x)
    return _BoxMeanPool.apply(x)


def box_mean_pool3d_reference(x: torch.Tensor) -> torch.Tensor:
    """The reference of :func:`box_mean_pool3d`: ``F.avg_pool3d(x, 3, 2, 1)``."""
    return F.avg_pool3d(x, 3, 2, 1)
