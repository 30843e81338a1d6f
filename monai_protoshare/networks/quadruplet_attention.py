"""3D quadruplet attention, the attention inside MAProtoNet's bottlenecks (Li et al., 2024)."""

from __future__ import annotations

import torch
from torch import nn

from .layers import (
    fft_conv3d,
    inverse_permutation,
    max_mean_pool,
    max_mean_pool_reference,
    reference_kernels,
    single_channel_batch_norm,
    stored_view,
)

__all__ = ["AttentionGate", "QuadrupletAttention"]


class AttentionGate(nn.Module):
    """``G(t) = t · sigmoid(BN(Conv3d(2→1, 7³)([max_1(t), mean_1(t)])))``: a gate pooled over dimension 1.

    The convolution runs as :func:`.layers.fft_conv3d` (same values, several times faster on CPU and CUDA) and, on
    CUDA, the batch norm as :func:`.layers.single_channel_batch_norm`; on the meta device (where the MAC counters
    run) and in a TorchScript export (scripted or traced) both are the modules' own. Weights and buffers stay an
    ``nn.Conv3d``'s and an ``nn.BatchNorm3d``'s, so checkpoints are unchanged.

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
        # on CPU nn.BatchNorm3d is faster than the whole-tensor reductions, on CUDA far slower (benchmarks/README.md)
        return torch.sigmoid(single_channel_batch_norm(self.bn, logits) if logits.is_cuda else self.bn(logits))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return t * self.weights(max_mean_pool_reference(t, [1])[0])
        return t * self.weights(max_mean_pool(t, (1,))[0])


class QuadrupletAttention(nn.Module):
    """Average of four gates, each pooling over one of (H, W, D, C) of a (B, C, H, W, D) tensor.

    The first three branches move one spatial axis into the channel slot (so the 7³ convolution runs
    over the remaining three axes, channels included), the fourth is a plain spatial gate.

    The four gates' factors are broadcast along their pooled axes and summed before one product with the
    input, ``out = x · ¼ Σ_g w_g``, which equals ``¼ Σ_g G_g(x)`` without the permuted copies of ``x``; the
    eight poolings run in one pass of :func:`.layers.max_mean_pool`. Scripted exports and the reference kernels
    (:mod:`.layers`) compute the formula as written (:meth:`formula`).

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

    def formula(self, x: torch.Tensor) -> torch.Tensor:
        """``¼ Σ_g G_g(x)`` as written, in ops TorchScript compiles: the reference of :meth:`forward`."""
        factor = 0.25 * self.spatial_gate.weights(max_mean_pool_reference(x, [1])[0])
        for perm, gate in zip(self._PERMUTATIONS, self.axis_gates):
            factor = factor + 0.25 * gate.weights(max_mean_pool_reference(x.permute(perm), [1])[0]).permute(perm)
        return x * factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # an export: the formula
            return self.formula(x)
        if reference_kernels():
            return self.formula(x)
        pooled = max_mean_pool(x, (1, *(perm[1] for perm in self._PERMUTATIONS)))
        factors = [0.25 * self.spatial_gate.weights(pooled[0])]  # (B, 1, H, W, D), then (B, C, 1, W, D) ...
        for perm, gate, branch in zip(self._PERMUTATIONS, self.axis_gates, pooled[1:], strict=True):
            factors.append(0.25 * gate.weights(branch.permute(self._pooled_order(perm))).permute(perm))
        # ¼ Σ_g w_g and one product, over x as it is stored (see stored_view), with the small factors stored in that
        # order too: PyTorch then lays their broadcast sum out in x's order and runs each term at memory speed (for
        # the gates' own strides it chose other, slower orders: benchmarks/README.md). Any two factors
        # span all of x's axes. The product is in place unless autograd keeps the factor.
        dense, order = stored_view(x)
        c, h, w, d = (f.permute(order).contiguous() for f in factors)
        factor = torch.add(c, h).add_(w).add_(d)
        product = dense * factor if torch.is_grad_enabled() else factor.mul_(dense)
        return product.permute(inverse_permutation(order))
