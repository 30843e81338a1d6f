"""The attention gates' pooling ``[max_d(x), mean_d(x)]`` over several dimensions in one pass."""

from __future__ import annotations

import math

import torch

from .layout import inverse_permutation, stored_view
from .switch import reference_kernels

__all__ = ["max_mean_pool", "max_mean_pool_reference"]


def _logical_rest(order: tuple[int, ...], d: int) -> tuple[int, ...]:
    """Permutation of a reduction over logical ``d`` of ``x.permute(order)`` to the other dims' logical order."""
    stored = [a for a in order if a != d]
    return tuple(stored.index(a) for a in sorted(stored))


def _amax(dense: torch.Tensor, dim: int) -> torch.Tensor:
    """``dense.amax(dim)``; on CPU, where PyTorch's reduction cannot vectorise, as pairwise maxima of halves.

    PyTorch's CPU max reduction vectorises across an inner run (the elements after ``dim``, stored contiguously) of
    64 or more, or along a contiguous fibre (inner run 1) of 32 or more. Otherwise, e.g. over W (inner run 24) or D
    (a fibre of 24) of a contiguous (1, 256, 32, 32, 24) map, ``torch.maximum`` of the two halves, repeated while
    the length is even, is faster (``benchmarks/README.md``). A traced export keeps ``amax``: the number of
    halvings depends on the traced size.
    """
    inner = math.prod(dense.shape[dim + 1 :])
    vectorised = inner >= 64 or (inner == 1 and dense.shape[dim] >= 32)
    if dense.device.type != "cpu" or vectorised or torch.jit.is_tracing():
        return dense.amax(dim=dim)
    while dense.shape[dim] % 2 == 0:
        half = dense.shape[dim] // 2
        dense = torch.maximum(dense.narrow(dim, 0, half), dense.narrow(dim, half, half))
    return dense.amax(dim=dim)


def _max_with_index(dense: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``dense.max(dim)``: the maxima and the index of the first of them along ``dim``.

    Over the outermost dimension after the batch, PyTorch's CPU ``max(dim)`` walks each fibre at the stride of the
    whole tensor; there the index is the smallest position equal to the maximum, found by :func:`_amax` and one
    comparison, several times faster (``benchmarks/README.md``).
    """
    if dense.device.type != "cpu" or dim != 1:
        return dense.max(dim=dim)
    values = _amax(dense, dim).unsqueeze(dim)
    positions = torch.arange(dense.shape[dim], dtype=torch.int32, device=dense.device)
    positions = positions.view(-1, *([1] * (dense.dim() - dim - 1)))
    index = torch.where(dense == values, positions, dense.shape[dim]).amin(dim=dim)
    return values.squeeze(dim), index.clamp_max_(dense.shape[dim] - 1).long()  # a NaN fibre: its last element


class _MaxMeanPool(torch.autograd.Function):
    """``[max_d(x), mean_d(x)]`` for every ``d`` of ``dims``, with one gradient buffer for all of them.

    Autograd's backward of these reductions writes a full-size tensor per reduction (zeros holding the max's
    gradient at the maxima; the mean's gradient expanded) and adds them up; this backward broadcast-adds the
    means' gradients into one buffer, stored as the input is, and scatters the maxima's into it.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        dense, order = stored_view(x)
        pooled, indices = [], []
        for d in dims:
            values, index = _max_with_index(dense, order.index(d))
            rest = _logical_rest(order, d)
            pooled.append(torch.stack([values.permute(rest), dense.mean(dim=order.index(d)).permute(rest)], dim=1))
            indices.append(index.unsqueeze(order.index(d)))
        ctx.save_for_backward(*indices)
        ctx.dims, ctx.order, ctx.dense_shape = dims, order, dense.shape
        return tuple(pooled)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, None]:  # type: ignore[override]
        used = [(g, d, i) for g, d, i in zip(grads, ctx.dims, ctx.saved_tensors, strict=True) if g is not None]
        if not used:
            return None, None
        order, shape = ctx.order, ctx.dense_shape
        # the means' gradients, stored like x.permute(order) (so that their broadcast sum is too; see the attention)
        means = [(g[:, 1] / shape[order.index(d)]).unsqueeze(d).permute(order).contiguous() for g, d, _ in used]
        grad = torch.add(means[0], means[1]) if len(means) > 1 else means[0]
        grad = grad.expand(shape).contiguous()  # a copy only for one pooled dimension
        for mean in means[2:]:
            grad.add_(mean)
        for g, d, index in used:
            grad.scatter_add_(order.index(d), index, g[:, 0].unsqueeze(d).permute(order))
        return grad.permute(inverse_permutation(order)), None


def max_mean_pool(x: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """The gates' pooling ``[max_d(x), mean_d(x)]`` over each dimension ``d`` of ``dims``, as (B, 2, ...) tensors.

    Each output keeps the other dimensions of ``x`` in their order (``d = 3`` of a (B, C, H, W, D) tensor gives
    (B, 2, C, H, D)). The reductions run over ``x`` as it is stored (:func:`.layout.stored_view`). With
    gradients the values are the same and the backward is one pass (:class:`_MaxMeanPool`); at a tie the max's
    gradient goes to the first of the tied elements along ``d``, as ``torch.max(dim)`` gives it, where ``amax`` would
    share it out (both are subgradients; fp32 ties are about one in 10⁷ elements). Under the reference switch:
    :func:`max_mean_pool_reference`.

    Example:
        >>> [tuple(p.shape) for p in max_mean_pool(torch.zeros(1, 8, 6, 5, 4), (1, 3))]
        [(1, 2, 6, 5, 4), (1, 2, 8, 6, 4)]
    """
    if reference_kernels():
        return tuple(max_mean_pool_reference(x, list(dims)))
    if torch.is_grad_enabled() and x.requires_grad:
        return _MaxMeanPool.apply(x, tuple(dims))
    dense, order = stored_view(x)
    pooled = []
    for d in dims:
        i, rest = order.index(d), _logical_rest(order, d)
        pooled.append(torch.stack([_amax(dense, i).permute(rest), dense.mean(dim=i).permute(rest)], dim=1))
    return tuple(pooled)


def max_mean_pool_reference(x: torch.Tensor, dims: list[int]) -> list[torch.Tensor]:
    """The reference of :func:`max_mean_pool`: ``torch.stack([x.amax(d), x.mean(d)], 1)`` for each ``d`` (scriptable).

    Autograd shares a tied maximum's gradient out among the tied elements (``amax``'s subgradient).
    """
    return [torch.stack([x.amax(dim=d), x.mean(dim=d)], dim=1) for d in dims]
