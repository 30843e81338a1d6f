"""The heads' fast paths (issue 25): 1×1×1 convolutions as GEMMs, copy-free spatial contractions, the gated fusion's
lerp, and the stage-1 loss of a whole network, each against its reference formulation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from monai_protoshare.losses import LatentSpaceLoss
from monai_protoshare.networks import GatedFusion, build_network
from monai_protoshare.networks import layers as L

FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last_3d}


def _volume(shape, fmt, seed=0):
    torch.manual_seed(seed)
    return torch.randn(*shape, dtype=torch.float64).contiguous(memory_format=FORMATS[fmt]).requires_grad_(True)


def _value_and_gradients(fn, *inputs):
    out = fn(*inputs)
    torch.manual_seed(1)
    upstream = torch.randn(out.shape, dtype=out.dtype)
    return out, torch.autograd.grad(out, [t for t in inputs if t is not None], upstream)


@pytest.fixture
def one_thread():
    """The GEMM path runs where PyTorch's ``conv3d`` would take ``slow_conv3d``: one thread, a batch under 16."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("bias", [False, True])
def test_pointwise_conv3d_is_conv3d(fmt, bias, one_thread):
    x = _volume((2, 5, 4, 3, 6), fmt)
    weight = torch.randn(7, 5, 1, 1, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, requires_grad=True) if bias else None
    out, grads = _value_and_gradients(L.pointwise_conv3d, x, weight, b)
    ref, ref_grads = _value_and_gradients(lambda *a: F.conv3d(*a), x, weight, b)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
    # the layout is kept: a channels-last GEMM result (slow_conv3d would have returned a contiguous tensor)
    assert out.is_contiguous(memory_format=FORMATS[fmt])


def test_pointwise_module_keeps_conv3d_parameters_and_state_dict():
    torch.manual_seed(0)
    conv = nn.Conv3d(4, 3, kernel_size=1, bias=False)
    torch.manual_seed(0)
    pointwise = L.PointwiseConv3d(4, 3, bias=False)
    assert isinstance(pointwise, nn.Conv3d) and pointwise.kernel_size == (1, 1, 1)
    assert conv.state_dict().keys() == pointwise.state_dict().keys()
    torch.testing.assert_close(conv.weight, pointwise.weight, rtol=0, atol=0)  # the same initialisation


@pytest.mark.parametrize(
    "fmts", [("channels_last", "channels_last"), ("channels_last", "contiguous"), ("contiguous", "contiguous")]
)
def test_spatial_contraction_is_the_einsum(fmts):
    maps, features = _volume((2, 3, 4, 5, 3), fmts[0]), _volume((2, 6, 4, 5, 3), fmts[1], seed=2)
    out, grads = _value_and_gradients(L.spatial_contraction, maps, features)
    expected = torch.einsum("bkhwd,behwd->bke", maps, features)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    _, ref_grads = _value_and_gradients(L.spatial_contraction_reference, maps, features)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_spatial_logsumexp_is_logsumexp_over_voxels(fmt):
    x = _volume((2, 4, 3, 5, 2), fmt)
    out, (grad,) = _value_and_gradients(L.spatial_logsumexp, x)
    torch.testing.assert_close(out, torch.log(torch.exp(x).sum(dim=(2, 3, 4))), rtol=1e-12, atol=1e-12)
    _, (ref_grad,) = _value_and_gradients(L.spatial_logsumexp_reference, x)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)


def test_gated_fusion_lerp_is_the_formula_of_eq_11():
    fuse = GatedFusion(8).double()
    enc, dec = _volume((2, 8, 3, 4, 3), "channels_last"), _volume((2, 8, 3, 4, 3), "channels_last", seed=3)
    out, grads = _value_and_gradients(fuse, enc, dec)
    alpha = fuse.gates(enc, dec)
    torch.testing.assert_close(out, alpha * enc + (1 - alpha) * dec, rtol=1e-12, atol=1e-12)
    with L.use_reference_kernels():
        ref, ref_grads = _value_and_gradients(fuse, enc, dec)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("model", ["um_protoshare_e2", "mprotonet"])
def test_stage_1_loss_and_gradients_match_the_reference_kernels(model, one_thread):
    """The whole stage-1 loss (eq. 19) and every parameter gradient, fast kernels against references (fp64)."""
    torch.manual_seed(0)
    net = build_network(model, encoder_layers=(1, 1), encoder_widths=(4, 8), embedding_dim=8).double()
    net.to(memory_format=torch.channels_last_3d).train()
    x = torch.randn(2, 4, 32, 32, 24, dtype=torch.float64).contiguous(memory_format=torch.channels_last_3d)
    labels = torch.tensor([0, 1])
    loss = LatentSpaceLoss()
    results = []
    for reference in (False, True):
        torch.manual_seed(5)  # the mapping loss's rescale factor
        with L.use_reference_kernels(reference):
            terms = loss(net, net.explain(x), labels)
            grads = torch.autograd.grad(terms["loss"], list(net.parameters()), allow_unused=True)
        results.append((terms, grads))
    (fast, fast_grads), (ref, ref_grads) = results
    for name in ref:
        torch.testing.assert_close(fast[name], ref[name], rtol=1e-10, atol=1e-12, msg=name)
    for g, r in zip(fast_grads, ref_grads, strict=True):
        if r is None:
            assert g is None
        else:
            torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11)
