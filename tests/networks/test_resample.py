"""Separable trilinear resizing equals F.interpolate, keeps dtype and memory format, and has the same gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from monai_protoshare.networks.layers.resample import linear_weights, resize_trilinear, separable_resize

SIZES = [  # (input spatial size, output size): ×2 as in the decoder, the mapping loss's 0.75/0.875, odd sizes
    ((4, 5, 3), (8, 10, 6)),
    ((8, 8, 6), (6, 6, 4)),
    ((8, 8, 6), (7, 7, 5)),
    ((5, 7, 9), (5, 3, 13)),
    ((1, 4, 2), (3, 1, 2)),
]


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_separable_resize_equals_interpolate_in_value_gradient_and_layout(sizes, align_corners, channels_last):
    torch.manual_seed(0)
    n_in, n_out = sizes
    x = torch.randn(2, 3, *n_in, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last_3d)
    x.requires_grad_(True)
    expected = F.interpolate(x, size=n_out, mode="trilinear", align_corners=align_corners)
    resized = separable_resize(x, n_out, align_corners)
    torch.testing.assert_close(resized, expected, rtol=0, atol=1e-12)
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    assert resized.is_contiguous(memory_format=layout)  # no layout copy for the next convolution to undo
    upstream = torch.randn_like(expected)
    (grad_expected,) = torch.autograd.grad(expected, x, upstream)
    (grad,) = torch.autograd.grad(resized, x, upstream)
    torch.testing.assert_close(grad, grad_expected, rtol=0, atol=1e-12)


def test_linear_weights_of_a_doubling_are_the_quarter_stencil():
    lower, upper, weight = linear_weights(3, 6, align_corners=False)
    # out[2i] = ¾ x[i] + ¼ x[i-1], out[2i+1] = ¾ x[i] + ¼ x[i+1], clamped at the borders
    assert lower.tolist() == [0, 0, 0, 1, 1, 2] and upper.tolist() == [1, 1, 1, 2, 2, 2]
    torch.testing.assert_close(weight, torch.tensor([0.0, 0.25, 0.75, 0.25, 0.75, 0.25]))
    lower, upper, weight = linear_weights(5, 3, align_corners=True)  # samples 0, 2, 4 exactly
    assert lower.tolist() == [0, 2, 4] and weight.tolist() == [0.0, 0.0, 0.0]


def test_bfloat16_stays_bfloat16_and_close_to_the_fp32_resize():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6, 4).to(memory_format=torch.channels_last_3d)
    resized = separable_resize(x.bfloat16(), (12, 12, 8))
    assert resized.dtype == torch.bfloat16 and resized.is_contiguous(memory_format=torch.channels_last_3d)
    expected = F.interpolate(x, size=(12, 12, 8), mode="trilinear", align_corners=False)
    torch.testing.assert_close(resized.float(), expected, rtol=0.02, atol=0.02)


def test_resize_trilinear_uses_interpolate_off_cuda():
    x = torch.randn(1, 2, 3, 4, 5)
    expected = F.interpolate(x, size=(6, 8, 10), mode="trilinear", align_corners=False)
    torch.testing.assert_close(resize_trilinear(x, torch.Size([6, 8, 10])), expected, rtol=0, atol=0)
