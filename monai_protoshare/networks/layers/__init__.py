"""Performance kernels of the networks, each next to a plain reference implementation, and the switch between them.

- ``with_gradient_layout``: ``x``, its gradient handed back in ``x``'s memory format (:mod:`.layout`);
- ``box_mean_pool3d``: ``F.avg_pool3d(x, 3, 2, 1)`` as separable strided sums (:mod:`.pooling`);
- ``separable_resize``: ``F.interpolate(x, size, mode="trilinear")`` in ``x``'s dtype and layout (:mod:`.resample`);
- ``max_mean_pool``: ``[amax_d(x), mean_d(x)]`` for several ``d`` in one pass (:mod:`.reductions`);
- ``fft_conv3d``: ``F.conv3d(x, w, padding=k // 2)`` through FFTs (:mod:`.fft_conv`);
- ``single_channel_batch_norm``: ``bn(x)`` for a ``BatchNorm3d(1)`` as whole-tensor reductions (:mod:`.batch_norm`);
- ``pointwise_conv3d`` (module ``PointwiseConv3d``): a 1×1×1 ``F.conv3d`` as one GEMM over the stored channels-last
  tensor; ``spatial_contraction``: ``einsum("bkv,bev->bke")`` as one ``bmm``, and ``spatial_logsumexp`` over the
  voxels, neither copying a channels-last input (:mod:`.pointwise`).

Each has its reference next to it, named ``<kernel>_reference``.

**The switch** (as MONAI's ``USE_COMPILED``): the fast kernels run by default; the environment variable
``MONAI_PROTOSHARE_REFERENCE_KERNELS=1``, read once at import, or :class:`use_reference_kernels` (a call, or a
context manager restoring the previous choice) makes every fast kernel above call its reference instead
(:mod:`.switch`). The networks call the fast kernels only where they pay (the box pooling and the pairwise
maxima on CPU, the separable resize and the one-channel batch norm on CUDA) and the references elsewhere; exports
(TorchScript, traces) take the aten ops whatever the switch. Under the switch
:class:`~monai_protoshare.networks.QuadrupletAttention` also computes its formula, ``x · ¼ Σ_g w_g``, as written.
Each reference is plain torch (autograd's gradient) and the tests hold every fast kernel to it in value and
gradient (``tests/networks/test_layers.py``); timings are in ``benchmarks/README.md``. :mod:`.layout` also holds the layout helpers the kernels share.
"""

from .batch_norm import single_channel_batch_norm, single_channel_batch_norm_reference
from .fft_conv import fft_conv3d, fft_conv3d_reference
from .layout import (
    inverse_permutation,
    is_channels_last,
    stored_view,
    with_gradient_layout,
    with_gradient_layout_reference,
)
from .pointwise import (
    PointwiseConv3d,
    pointwise_conv3d,
    pointwise_conv3d_reference,
    spatial_contraction,
    spatial_contraction_reference,
    spatial_logsumexp,
    spatial_logsumexp_reference,
)
from .pooling import box_mean_pool3d, box_mean_pool3d_reference
from .reductions import max_mean_pool, max_mean_pool_reference
from .resample import linear_weights, resize_trilinear, separable_resize, separable_resize_reference
from .switch import ENVIRONMENT_VARIABLE, reference_kernels, use_reference_kernels

__all__ = [
    "ENVIRONMENT_VARIABLE",
    "PointwiseConv3d",
    "box_mean_pool3d",
    "box_mean_pool3d_reference",
    "fft_conv3d",
    "fft_conv3d_reference",
    "inverse_permutation",
    "is_channels_last",
    "linear_weights",
    "max_mean_pool",
    "max_mean_pool_reference",
    "pointwise_conv3d",
    "pointwise_conv3d_reference",
    "reference_kernels",
    "resize_trilinear",
    "separable_resize",
    "separable_resize_reference",
    "single_channel_batch_norm",
    "single_channel_batch_norm_reference",
    "spatial_contraction",
    "spatial_contraction_reference",
    "spatial_logsumexp",
    "spatial_logsumexp_reference",
    "stored_view",
    "use_reference_kernels",
    "with_gradient_layout",
    "with_gradient_layout_reference",
]
