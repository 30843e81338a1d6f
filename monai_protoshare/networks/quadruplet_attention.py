"""3D quadruplet attention, the attention inside MAProtoNet's bottlenecks (Li et al., 2024)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .layout import inverse_permutation, stored_view

__all__ = ["AttentionGate", "QuadrupletAttention", "fft_conv3d", "max_mean_pool", "single_channel_batch_norm"]


def _logical_rest(order: tuple[int, ...], d: int) -> tuple[int, ...]:
    """Permutation of a reduction over logical ``d`` of ``x.permute(order)`` to the other dims' logical order."""
    stored = [a for a in order if a != d]
    return tuple(stored.index(a) for a in sorted(stored))


def _amax(dense: torch.Tensor, dim: int) -> torch.Tensor:
    """``dense.amax(dim)``; on CPU, where PyTorch's reduction cannot vectorise, as pairwise maxima of halves.

    PyTorch's CPU max reduction vectorises across an inner run (the elements after ``dim``, stored contiguously) of
    64 or more, or along a contiguous fibre (inner run 1) of 32 or more. Otherwise, e.g. over W (inner run 24) or D
    (a fibre of 24) of a contiguous (1, 256, 32, 32, 24) map, ``torch.maximum`` of the two halves, repeated while
    the length is even, is 1.5-2× faster (W: 20 → 9 ms, D: 17 → 11 ms, one thread). A traced export keeps
    ``amax``: the number of halvings depends on the traced size.
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
    whole tensor (81 ms for C of a contiguous (1, 256, 32, 32, 24) map, one thread); there the index is the
    smallest position equal to the maximum, found by :func:`_amax` and one comparison (21 ms).
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
    def backward(ctx, *grads: torch.Tensor | None):  # type: ignore[override]
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
    share it out (both are subgradients; fp32 ties are about one in 10⁷ elements).

    Example:
        >>> [tuple(p.shape) for p in max_mean_pool(torch.zeros(1, 8, 6, 5, 4), (1, 3))]
        [(1, 2, 6, 5, 4), (1, 2, 8, 6, 4)]
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return _MaxMeanPool.apply(x, tuple(dims))
    dense, order = stored_view(x)
    pooled = []
    for d in dims:
        i, rest = order.index(d), _logical_rest(order, d)
        pooled.append(torch.stack([_amax(dense, i).permute(rest), dense.mean(dim=i).permute(rest)], dim=1))
    return tuple(pooled)


def _max_mean(x: torch.Tensor) -> torch.Tensor:
    """``[max_1(x), mean_1(x)]``, (B, 2, ...): a gate's pooling over dimension 1 in plain ops (the scripted export)."""
    return torch.stack([x.amax(dim=1), x.mean(dim=1)], dim=1)


def _fft_size(n: int) -> int:
    """The smallest 2-, 3- and 5-smooth integer ≥ ``n`` (sizes the FFTs run fastest on)."""
    while True:
        rest = n
        for prime in (2, 3, 5):
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return n
        n += 1


def _kernel_spectrum(weight: torch.Tensor, size: list[int]) -> torch.Tensor:
    """``torch.fft.rfftn(weight, s=size, dim=(2, 3, 4))``, one axis at a time from the last.

    A k³ kernel padded to a whole volume is mostly zeros: transforming the last axis first, then the middle one,
    runs the first two passes over k² and k·size[1] rows instead of the volume's (the weight's backward, through the
    same three passes, shrinks likewise).
    """
    spectrum = torch.fft.rfft(weight, n=size[2], dim=4)
    spectrum = torch.fft.fft(spectrum, n=size[1], dim=3)
    return torch.fft.fft(spectrum, n=size[0], dim=2)


def fft_conv3d(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.conv3d(x, weight, padding=k // 2)`` (zero padding, odd kernel sizes) as a product of Fourier transforms.

    Correlating with ``weight`` is convolving with it flipped. Each axis of length n is zero-padded to at least
    n + k // 2: output j ∈ [k//2, k//2 + n) of the circular convolution of size N then sums x[j − t], t ∈ [0, k), at
    indices that wrap around only below 0, to N − k + 1 + j ≥ n, where the padding is zero, so it equals the linear
    one. The spatial axes are transformed in the order ``x`` stores them (largest stride first), the kernel's axis by
    axis (:func:`_kernel_spectrum`).

    For MAProtoNet's gates (2 → 1 channels, 7³ kernels at 1×256×32×24) a direct convolution costs 686 MACs per
    voxel, which oneDNN and cuDNN run far below their usual rates on so few channels; the FFTs are 4-6× faster
    forward and 10-14× faster forward + backward on one CPU thread (``benchmarks/bench_attention.py``), and made
    MAProtoNet's bf16 training step 1.27× faster on an H200. The values equal ``F.conv3d``'s to rounding (fp64:
    1e-12; fp32: about 1e-6 of the output's scale). Half-precision inputs (bf16 autocast) are transformed in fp32,
    which cuFFT and pocketfft need, and the result is cast back to ``x``'s dtype, as ``conv3d`` under autocast
    returns it.

    Args:
        x: (B, C, H, W, D).
        weight: (O, C, k_H, k_W, k_D), odd sizes.

    Returns:
        (B, O, H, W, D).
    """
    out_dtype, dtype = x.dtype, torch.promote_types(x.dtype, torch.float32)
    stored = (0, 1, *sorted((2, 3, 4), key=lambda a: -x.stride(a)))
    x, weight = x.to(dtype).permute(stored), weight.to(dtype).permute(stored)
    spatial, kernel = x.shape[2:], weight.shape[2:]
    size = [_fft_size(n + k // 2) for n, k in zip(spatial, kernel, strict=True)]
    axes = (2, 3, 4)
    signal = torch.fft.rfftn(x, s=size, dim=axes).unsqueeze(1)  # (B, 1, C, ...)
    response = _kernel_spectrum(weight.flip(axes), size)  # (O, C, ...)
    full = torch.fft.irfftn((signal * response).sum(dim=2), s=size, dim=axes)  # (B, O, *size)
    out = full[(..., *(slice(k // 2, k // 2 + n) for n, k in zip(spatial, kernel, strict=True)))]
    return out.permute(inverse_permutation(stored)).to(out_dtype)


def single_channel_batch_norm(bn: nn.BatchNorm3d, x: torch.Tensor) -> torch.Tensor:
    """``bn(x)`` for a one-channel ``bn``, with whole-tensor reductions.

    The same values, gradients and running-statistics updates as ``nn.BatchNorm3d``: in training the batch's
    biased variance normalises and the unbiased one enters the running average (``momentum``, or the cumulative
    average when it is ``None``); in eval mode the running statistics normalise. Statistics and normalisation run
    in fp32 for half-precision inputs (as cuDNN's do); the result keeps ``x``'s dtype. cuDNN reduces each channel
    of a batch norm within one thread block: for the gates' single channel of up to 32×256×32×24 values it took
    36 of the 64 ms of an attention's bf16 forward + backward on an H200 (``benchmarks/README.md``).

    Args:
        bn: a ``BatchNorm3d(1)`` (its parameters and buffers are used and updated).
        x: (B, 1, H, W, D).
    """
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


class AttentionGate(nn.Module):
    """``G(t) = t · sigmoid(BN(Conv3d(2→1, 7³)([max_1(t), mean_1(t)])))``: a gate pooled over dimension 1.

    The convolution runs as :func:`fft_conv3d` (same values, several times faster on CPU and CUDA) and, on CUDA,
    the batch norm as :func:`single_channel_batch_norm`; on the meta device (where the MAC counters run) and in a
    TorchScript export (scripted or traced) both are the modules' own. Weights and buffers stay an ``nn.Conv3d``'s
    and an ``nn.BatchNorm3d``'s, so checkpoints are unchanged.

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

    def weights(self, pooled: torch.Tensor) -> torch.Tensor:
        """``sigmoid(BN(conv(pooled)))`` of the (B, 2, ...) ``[max, mean]`` pooling: the gate's (B, 1, ...) factor."""
        if torch.jit.is_scripting():  # a scripted export: fft_conv3d does not script
            return torch.sigmoid(self.bn(self.conv(pooled)))
        # traced and torch.export graphs would keep the example's FFT sizes; the meta device: MAC counting
        if torch.jit.is_tracing() or torch.compiler.is_exporting() or pooled.is_meta:
            return torch.sigmoid(self.bn(self.conv(pooled)))
        logits = fft_conv3d(pooled, self.conv.weight)
        # on CPU nn.BatchNorm3d is 2.5x faster than the whole-tensor reductions; on CUDA far slower (one block)
        return torch.sigmoid(single_channel_batch_norm(self.bn, logits) if logits.is_cuda else self.bn(logits))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return t * self.weights(_max_mean(t))
        return t * self.weights(max_mean_pool(t, (1,))[0])


class QuadrupletAttention(nn.Module):
    """Average of four gates, each pooling over one of (H, W, D, C) of a (B, C, H, W, D) tensor.

    The first three branches move one spatial axis into the channel slot (so the 7³ convolution runs
    over the remaining three axes, channels included), the fourth is a plain spatial gate.

    The four gates' factors are broadcast along their pooled axes and summed before one product with the
    input, ``out = x · ¼ Σ_g w_g``, which equals ``¼ Σ_g G_g(x)`` without the permuted copies of ``x``; the
    eight poolings run in one pass of :func:`max_mean_pool`.

    Example:
        >>> QuadrupletAttention()(torch.randn(2, 8, 6, 6, 4)).shape
        torch.Size([2, 8, 6, 6, 4])
    """

    # permutation moving the pooled axis to dim 1; every one is its own inverse
    _PERMUTATIONS = ((0, 2, 1, 3, 4), (0, 3, 2, 1, 4), (0, 4, 2, 3, 1))
    __constants__ = ["_PERMUTATIONS"]  # for the scripted forward

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.axis_gates = nn.ModuleList(AttentionGate(kernel_size) for _ in self._PERMUTATIONS)
        self.spatial_gate = AttentionGate(kernel_size, zero_init=True)

    @staticmethod
    def _pooled_order(perm: tuple[int, ...]) -> tuple[int, ...]:
        """Permutation of a pooling over ``perm[1]`` (other axes in the input's order) to the gate's axis order."""
        rest = [a for a in range(1, 5) if a != perm[1]]
        return (0, 1, *(2 + rest.index(a) for a in perm[2:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # an export: the formula, ¼ Σ_g G_g(x), in ops TorchScript compiles
            factor = 0.25 * self.spatial_gate.weights(_max_mean(x))
            for perm, gate in zip(self._PERMUTATIONS, self.axis_gates):
                factor = factor + 0.25 * gate.weights(_max_mean(x.permute(perm))).permute(perm)
            return x * factor
        pooled = max_mean_pool(x, (1, *(perm[1] for perm in self._PERMUTATIONS)))
        factors = [0.25 * self.spatial_gate.weights(pooled[0])]  # (B, 1, H, W, D), then (B, C, 1, W, D) ...
        for perm, gate, branch in zip(self._PERMUTATIONS, self.axis_gates, pooled[1:], strict=True):
            factors.append(0.25 * gate.weights(branch.permute(self._pooled_order(perm))).permute(perm))
        # ¼ Σ_g w_g and one product, over x as it is stored (see stored_view), with the small factors stored in that
        # order too: PyTorch then lays their broadcast sum out in x's order and runs each term at memory speed (for
        # the gates' own strides it chose other orders, and a channels-last sum took 2-3× longer). Any two factors
        # span all of x's axes. The product is in place unless autograd keeps the factor.
        dense, order = stored_view(x)
        c, h, w, d = (f.permute(order).contiguous() for f in factors)
        factor = torch.add(c, h).add_(w).add_(d)
        product = dense * factor if torch.is_grad_enabled() else factor.mul_(dense)
        return product.permute(inverse_permutation(order))
