"""Memory layouts of 5-D tensors: views in the order their elements are stored, and gradients kept in a layout."""

from __future__ import annotations

import torch

from .switch import reference_kernels

__all__ = [
    "inverse_permutation",
    "is_channels_last",
    "stored_view",
    "with_gradient_layout",
    "with_gradient_layout_reference",
]


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` is stored ``channels_last_3d`` and not also contiguous (as tensors with C = 1 or 1³ are)."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d)


def stored_view(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``(x.permute(order), order)`` with the dimensions of a 5-D ``x`` in the order its elements are stored.

    ``order`` is ``(0, 2, 3, 4, 1)`` for ``channels_last_3d`` (not also contiguous), the identity otherwise; the
    permuted tensor is a contiguous view (a copy only for a tensor stored in neither order). Reductions, strided
    slices and broadcasts over it run at memory speed; over the logical dimensions of a channels-last tensor,
    PyTorch's CPU kernels are much slower, and several (``avg_pool3d``, pooling backwards) first copy it to the
    contiguous layout (timings: ``benchmarks/README.md``).

    Example:
        >>> view, order = stored_view(torch.zeros(1, 3, 4, 5, 6).contiguous(memory_format=torch.channels_last_3d))
        >>> tuple(view.shape), order, view.is_contiguous()
        ((1, 4, 5, 6, 3), (0, 2, 3, 4, 1), True)
    """
    order = (0, 2, 3, 4, 1) if is_channels_last(x) else (0, 1, 2, 3, 4)
    return x.permute(order).contiguous(), order


def inverse_permutation(order: tuple[int, ...]) -> tuple[int, ...]:
    """The permutation undoing ``order``: ``x.permute(order).permute(inverse_permutation(order))`` is ``x``."""
    return tuple(order.index(a) for a in range(len(order)))


class _GradientLayout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.memory_format = torch.channels_last_3d if is_channels_last(x) else torch.contiguous_format
        # x's own strides: view_as recomputes a size-1 dimension's (a batch of one's), and torch.cat then no
        # longer sees a channels-last input, lays its output out contiguously, and the next convolution copies it
        return x.as_strided(x.shape, x.stride(), x.storage_offset())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad.contiguous(memory_format=ctx.memory_format)


def with_gradient_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` (a view), whose gradient is handed back in ``x``'s memory format whatever layout it arrives in.

    Some CPU backward kernels convert both their saved input and the incoming gradient to one layout when the two
    differ (``max_pool3d``'s of a channels-last input is several times slower with a contiguous gradient), so
    converting the small gradient first pays (``benchmarks/README.md``). The reference (and exports) return ``x``.
    """
    # exports: a gradient-layout hint that TorchScript cannot compile and a trace would freeze (as_strided's sizes)
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return x
    if reference_kernels():
        return with_gradient_layout_reference(x)
    return _GradientLayout.apply(x) if torch.is_grad_enabled() and x.requires_grad else x


def with_gradient_layout_reference(x: torch.Tensor) -> torch.Tensor:
    """The reference of :func:`with_gradient_layout`: ``x`` itself (autograd's gradient, in whatever layout)."""
    return x
