"""``F.conv3d(x, weight, padding=k // 2)`` as a product of Fourier transforms, for few channels and large kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layout import inverse_permutation
from .switch import reference_kernels

__all__ = ["fft_conv3d", "fft_conv3d_reference"]


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

    For MAProtoNet's gates (2 → 1 channels, 7³ kernels) a direct convolution costs 686 MACs per voxel, which
    oneDNN and cuDNN run far below their usual rates on so few channels; the FFTs are several times faster on CPU
    and CUDA (timings: ``benchmarks/README.md``). The values equal ``F.conv3d``'s to rounding (fp64: 1e-12; fp32:
    about 1e-6 of the output's scale). Half-precision inputs (bf16 autocast) are transformed in fp32, which cuFFT
    and pocketfft need, and the result is cast back to ``x``'s dtype, as ``conv3d`` under autocast returns it.
    Under the reference switch: :func:`fft_conv3d_reference`.

    Args:
        x: (B, C, H, W, D).
        weight: (O, C, k_H, k_W, k_D), odd sizes.

    Returns:
        (B, O, H, W, D).
    """
    if reference_kernels():
        return fft_conv3d_reference(x, weight)
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


def fft_conv3d_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The reference of :func:`fft_conv3d`: ``F.conv3d(x, weight, padding=k // 2)`` per axis."""
    return F.conv3d(x, weight, padding=[k // 2 for k in weight.shape[2:]])
