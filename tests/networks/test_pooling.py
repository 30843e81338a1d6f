"""box_mean_pool3d = avg_pool3d(3, 2, 1) in value and gradient, for every layout and parity of size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from monai_protoshare.networks.layers import box_mean_pool3d, inverse_permutation, stored_view, with_gradient_layout


@pytest.mark.parametrize("shape", [(2, 3, 6, 5, 7), (1, 2, 4, 4, 4), (1, 1, 3, 4, 3), (1, 4, 9, 8, 3)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_box_mean_pool3d_equals_avg_pool3d_in_value_gradient_and_layout(shape, channels_last):
    torch.manual_seed(0)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    x = torch.randn(*shape, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_(True)
    out, expected = box_mean_pool3d(x), F.avg_pool3d(x, 3, 2, 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-13)
    if shape[1] > 1 and min(out.shape[2:]) > 1:  # a layout is only meaningful where the dims are not all 1
        assert out.is_contiguous(memory_format=fmt)
    upstream = torch.randn_like(expected)
    (got,) = torch.autograd.grad(out, x, upstream)
    (want,) = torch.autograd.grad(expected, x, upstream)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-13)


def test_box_mean_pool3d_passes_gradcheck():
    x = torch.randn(1, 2, 5, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(box_mean_pool3d, (x,))


def test_box_mean_pool3d_divides_every_window_by_27_padding_included():
    """Output i averages inputs 2i − 1 .. 2i + 1; of size 5, the first and last windows hold 2 inputs per axis."""
    out = box_mean_pool3d(torch.ones(1, 1, 5, 5, 5))
    assert out.shape == (1, 1, 3, 3, 3)
    assert out[0, 0, 0, 0, 0] == pytest.approx(8 / 27)
    assert out[0, 0, 1, 1, 1] == pytest.approx(1.0)
    assert out[0, 0, 2, 1, 2] == pytest.approx(12 / 27)


@pytest.mark.parametrize("channels_last", [False, True])
def test_stored_view_is_a_contiguous_permutation_that_inverts(channels_last):
    x = torch.randn(2, 3, 4, 5, 6)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    view, order = stored_view(x)
    assert view.is_contiguous() and order == ((0, 2, 3, 4, 1) if channels_last else (0, 1, 2, 3, 4))
    assert view.data_ptr() == x.data_ptr()  # no copy
    assert torch.equal(view.permute(inverse_permutation(order)), x)


def test_with_gradient_layout_hands_the_gradient_back_in_the_inputs_layout():
    x = torch.randn(1, 3, 4, 5, 6).contiguous(memory_format=torch.channels_last_3d).requires_grad_(True)
    seen = {}
    x.register_hook(lambda g: seen.setdefault("grad", g))
    y = with_gradient_layout(x)
    assert torch.equal(y, x) and y.stride() == x.stride()  # the batch's stride too, though its size is 1
    assert torch.cat([y, x], dim=1).is_contiguous(memory_format=torch.channels_last_3d)
    upstream = torch.randn(1, 3, 4, 5, 6)  # contiguous, as a slice of a contiguous cat's gradient is
    y.backward(upstream)
    assert torch.equal(x.grad, upstream)
    assert seen["grad"].is_contiguous(memory_format=torch.channels_last_3d) and not seen["grad"].is_contiguous()
    with torch.no_grad():
        assert with_gradient_layout(x) is x
