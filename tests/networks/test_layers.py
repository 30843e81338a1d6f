"""Every fast kernel of ``networks.layers`` equals its reference in value and gradient; the switch selects the path."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from monai_protoshare.networks import QuadrupletAttention
from monai_protoshare.networks import layers as L
from monai_protoshare.networks.layers import switch

FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last_3d}


def _volume(shape, fmt, seed=0):
    torch.manual_seed(seed)
    return torch.randn(*shape, dtype=torch.float64).contiguous(memory_format=FORMATS[fmt]).requires_grad_(True)


def _weight(shape):
    return torch.randn(*shape, dtype=torch.float64).requires_grad_(True)


#: name: (fast, reference, inputs); the first input is a (B, C, H, W, D) volume, every tensor input gets a gradient
KERNELS = {
    "box_mean_pool3d": (L.box_mean_pool3d, L.box_mean_pool3d_reference, lambda f: (_volume((2, 3, 7, 6, 5), f),)),
    "separable_resize_up": (
        L.separable_resize,
        L.separable_resize_reference,
        lambda f: (_volume((2, 3, 4, 5, 3), f), [7, 10, 3], False),
    ),
    "separable_resize_down_corners": (
        L.separable_resize,
        L.separable_resize_reference,
        lambda f: (_volume((1, 4, 9, 8, 6), f), [5, 3, 4], True),
    ),
    "fft_conv3d": (
        L.fft_conv3d,
        L.fft_conv3d_reference,
        lambda f: (_volume((2, 2, 6, 7, 5), f), _weight((3, 2, 5, 3, 7))),
    ),
    "with_gradient_layout": (
        L.with_gradient_layout,
        L.with_gradient_layout_reference,
        lambda f: (_volume((2, 3, 4, 4, 3), f),),
    ),
}


def _outputs_and_gradients(fn, inputs):
    out = fn(*inputs)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
    torch.manual_seed(1)
    upstream = [torch.randn(o.shape, dtype=o.dtype) for o in outs]  # randn_like would follow o's layout
    return outs, torch.autograd.grad(outs, tensors, upstream)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_fast_kernel_equals_its_reference_in_value_and_gradient(name, fmt):
    fast, reference, make_inputs = KERNELS[name]
    inputs = make_inputs(fmt)
    got, got_grads = _outputs_and_gradients(fast, inputs)
    want, want_grads = _outputs_and_gradients(reference, inputs)
    for a, b in zip(got + list(got_grads), want + list(want_grads), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("dims", [(1,), (3,), (1, 2, 3, 4)])
def test_max_mean_pool_equals_its_reference_with_and_without_gradients(dims, fmt):
    x = _volume((2, 6, 5, 4, 6), fmt)
    got, got_grad = _outputs_and_gradients(lambda t: L.max_mean_pool(t, dims), (x,))
    want, want_grad = _outputs_and_gradients(lambda t: L.max_mean_pool_reference(t, list(dims)), (x,))
    for a, b in zip(got + list(got_grad), want + list(want_grad), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)
    with torch.no_grad():
        for a, b in zip(L.max_mean_pool(x, dims), want, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


@pytest.mark.parametrize("training", [True, False])
def test_single_channel_batch_norm_equals_its_reference_with_running_statistics(training):
    torch.manual_seed(0)
    fast_bn, reference_bn = (nn.BatchNorm3d(1, momentum=0.3).double().train(training) for _ in range(2))
    for bn in (fast_bn, reference_bn):
        with torch.no_grad():
            bn.weight.fill_(1.5), bn.bias.fill_(-0.25), bn.running_mean.fill_(0.2), bn.running_var.fill_(2.0)
    x = _volume((3, 1, 4, 5, 3), "contiguous")
    got, got_grads = _outputs_and_gradients(lambda t: L.single_channel_batch_norm(fast_bn, t), (x,))
    want, want_grads = _outputs_and_gradients(lambda t: L.single_channel_batch_norm_reference(reference_bn, t), (x,))
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(got_grads[0], want_grads[0], rtol=0, atol=1e-12)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(fast_bn, name), getattr(reference_bn, name), rtol=0, atol=1e-14)


def _backward_names(out):
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return {type(o.grad_fn).__name__ for o in outs}


#: name: (call, the grad_fn names of the fast path's outputs, of the reference's)
PATHS = {
    "box_mean_pool3d": (lambda x: L.box_mean_pool3d(x), {"_BoxMeanPoolBackward"}, {"AvgPool3DBackward0"}),
    "separable_resize": (
        lambda x: L.separable_resize(x, [6, 5, 4]),
        {"LerpBackward1"},
        {"UpsampleTrilinear3DBackward0"},
    ),
    "max_mean_pool": (lambda x: L.max_mean_pool(x, (1, 2)), {"_MaxMeanPoolBackward"}, {"StackBackward0"}),
    "fft_conv3d": (
        lambda x: L.fft_conv3d(x, torch.ones(1, 3, 3, 3, 3, dtype=x.dtype)),
        {"PermuteBackward0"},  # of the transformed axes back to x's order
        {"ConvolutionBackward0"},
    ),
}


@pytest.mark.parametrize("name", sorted(PATHS))
def test_the_switch_runs_the_reference_and_restores_the_fast_path(name):
    call, fast_nodes, reference_nodes = PATHS[name]
    x = _volume((1, 3, 5, 4, 3), "contiguous")
    assert not L.reference_kernels()
    assert _backward_names(call(x)) == fast_nodes
    with L.use_reference_kernels():
        assert L.reference_kernels()
        assert _backward_names(call(x)) == reference_nodes
        with L.use_reference_kernels(False):  # nested: the fast kernels again, then the outer choice back
            assert _backward_names(call(x)) == fast_nodes
        assert _backward_names(call(x)) == reference_nodes
    assert not L.reference_kernels() and _backward_names(call(x)) == fast_nodes


def test_the_switch_as_a_call_and_for_the_gradient_layout_and_batch_norm():
    x = _volume((1, 3, 4, 4, 3), "channels_last")
    bn = nn.BatchNorm3d(1).double()
    y = _volume((2, 1, 3, 3, 3), "contiguous")
    assert L.with_gradient_layout(x) is not x
    assert type(L.single_channel_batch_norm(bn, y).grad_fn).__name__ != "NativeBatchNormBackward0"
    L.use_reference_kernels(True)
    try:
        assert L.with_gradient_layout(x) is x
        assert type(L.single_channel_batch_norm(bn, y).grad_fn).__name__ == "NativeBatchNormBackward0"
    finally:
        L.use_reference_kernels(False)
    assert not L.reference_kernels()


def test_quadruplet_attention_under_the_switch_equals_its_fast_path():
    torch.manual_seed(0)
    att = QuadrupletAttention(kernel_size=3).double().eval()
    x = _volume((2, 4, 5, 4, 6), "channels_last")
    fast, fast_grad = _outputs_and_gradients(att, (x,))
    with L.use_reference_kernels():
        reference, reference_grad = _outputs_and_gradients(att, (x,))
        assert type(att(x).grad_fn).__name__ == "MulBackward0"  # the formula's x · ¼ Σ_g w_g
    assert type(att(x).grad_fn).__name__ == "PermuteBackward0"  # the product over x as it is stored
    torch.testing.assert_close(fast[0], reference[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(fast_grad[0], reference_grad[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("TRUE", True), ("0", False), ("", False)])
def test_the_environment_variable_sets_the_initial_choice(monkeypatch, value, expected):
    monkeypatch.setenv(switch.ENVIRONMENT_VARIABLE, value)
    try:
        assert importlib.reload(switch).reference_kernels() is expected
        assert L.reference_kernels() is expected  # the kernels read the same module state
    finally:
        monkeypatch.delenv(switch.ENVIRONMENT_VARIABLE)
        importlib.reload(switch)
    assert not L.reference_kernels()


def test_a_bad_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv(switch.ENVIRONMENT_VARIABLE, "maybe")
    try:
        with pytest.raises(ValueError, match="MONAI_PROTOSHARE_REFERENCE_KERNELS='maybe'"):
            importlib.reload(switch)
    finally:
        monkeypatch.delenv(switch.ENVIRONMENT_VARIABLE)
        importlib.reload(switch)
