"""Truncated 3D ResNet encoder and MAProtoNet's quadruplet attention (App. A.1, Fig. 3; peers.md §3)."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.networks.nets.resnet import ResNetBottleneck
from network_cases import fp64_attention_case, tiny_input
from torch import nn

from monai_protoshare.networks import QuadrupletAttention, ResNetEncoder
from monai_protoshare.networks.encoder import AttentiveBottleneck
from monai_protoshare.networks.layers import fft_conv, fft_conv3d, max_mean_pool, single_channel_batch_norm
from monai_protoshare.networks.quadruplet_attention import AttentionGate


def test_cpu_small_encoder_scales():
    enc = ResNetEncoder(layers=(1, 1), widths=(16, 32))
    with torch.no_grad():
        feats = enc(torch.randn(2, 4, 64, 64, 48))
    assert [tuple(f.shape) for f in feats] == [(2, 16, 32, 32, 24), (2, 64, 16, 16, 12), (2, 128, 8, 8, 6)]
    assert enc.out_channels == (16, 64, 128) and enc.strides == (2, 4, 8) and enc.num_scales == 3


def test_paper_encoder_is_resnet152_cut_after_layer2():
    """Stem + 3 + 8 bottlenecks, 5,224,064 parameters (peers.md §10 'ref'), torchvision v1.5 layout."""
    with torch.device("meta"):
        enc = ResNetEncoder()
        feats = enc(torch.empty(1, 4, 128, 128, 96))
    assert [tuple(f.shape) for f in feats] == [(1, 64, 64, 64, 48), (1, 256, 32, 32, 24), (1, 512, 16, 16, 12)]
    assert (len(enc.layer1), len(enc.layer2)) == (3, 8)
    assert sum(p.numel() for p in enc.parameters()) == 5_224_064
    assert tuple(enc.conv1.weight.shape) == (64, 4, 7, 7, 7) and enc.conv1.stride == (2, 2, 2)
    # v1.5: the stride sits on the 3x3x3 conv; the shortcut is a strided 1x1x1 conv + BN
    assert enc.layer2[0].conv2.stride == (2, 2, 2) and enc.layer2[0].conv1.stride == (1, 1, 1)
    assert isinstance(enc.layer2[0].downsample[1], nn.BatchNorm3d) and enc.layer2[0].downsample[0].stride == (2, 2, 2)
    assert all(isinstance(b, ResNetBottleneck) and not isinstance(b, AttentiveBottleneck) for b in enc.layer2)


def test_single_stage_encoder_returns_two_scales():
    enc = ResNetEncoder(layers=(1,), widths=(16,), attention="quadruplet")
    with torch.no_grad():
        feats = enc(tiny_input())
    assert [tuple(f.shape) for f in feats] == [(2, 16, 16, 16, 12), (2, 64, 8, 8, 6)]
    assert enc.strides == (2, 4) and not hasattr(enc, "layer2")
    assert isinstance(enc.layer1[0], AttentiveBottleneck)


def test_encoder_scales_are_the_stem_and_the_stage_outputs():
    enc = ResNetEncoder(layers=(1, 1), widths=(16, 32)).eval()
    x = tiny_input()
    with torch.no_grad():
        s1, s2, s3 = enc(x)
        torch.testing.assert_close(s1, torch.relu(enc.bn1(enc.conv1(x))))
        torch.testing.assert_close(s2, enc.layer1(enc.maxpool(s1)))
        torch.testing.assert_close(s3, enc.layer2(s2))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layers": (1, 1, 1), "widths": (16, 32, 64)}, "1 or 2 positive integers"),
        ({"layers": (1, 1), "widths": (16,)}, "of equal length"),
        ({"layers": (0, 1), "widths": (16, 32)}, r"got layers=\(0, 1\)"),
        ({"attention": "triplet"}, "'triplet'"),
    ],
)
def test_encoder_configuration_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNetEncoder(**kwargs)


# ---------------------------------------------------------------- MAProtoNet's attentive bottleneck


def test_attentive_bottleneck_applies_attention_after_bn3_before_the_residual_sum():
    torch.manual_seed(0)
    attentive = AttentiveBottleneck(64, 16).eval()
    with torch.no_grad():  # an affine (not linear) bn3, so scaling before and after it differ
        attentive.bn3.running_mean.normal_()
        attentive.bn3.bias.normal_()
    plain = ResNetBottleneck(64, 16).eval()
    plain.load_state_dict({k: v for k, v in attentive.state_dict().items() if not k.startswith("attention.")})
    x = torch.randn(1, 64, 6, 6, 4)
    with torch.no_grad():
        attentive.attention = nn.Identity()
        torch.testing.assert_close(attentive(x), plain(x))
        attentive.attention = _Double()
        h = torch.relu(plain.bn2(plain.conv2(torch.relu(plain.bn1(plain.conv1(x))))))
        torch.testing.assert_close(attentive(x), torch.relu(2 * plain.bn3(plain.conv3(h)) + x))


class _Double(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def _set_gate(gate: AttentionGate, weight: float, bias: float) -> None:
    """Eval-mode BN as the affine map t -> weight * t + bias."""
    gate.bn.running_mean.zero_()
    gate.bn.running_var.fill_(1.0 - gate.bn.eps)
    with torch.no_grad():
        gate.bn.weight.fill_(weight)
        gate.bn.bias.fill_(bias)


def test_attention_gate_formula():
    """G(t) = t * sigmoid(BN(conv([max over dim 1, mean over dim 1])))."""
    torch.manual_seed(0)
    gate = AttentionGate(kernel_size=3).eval()
    _set_gate(gate, 2.0, -0.5)
    t = torch.randn(2, 5, 4, 4, 3)
    pooled = torch.stack([t.max(dim=1).values, t.mean(dim=1)], dim=1)
    expected = t * torch.sigmoid(2.0 * torch.nn.functional.conv3d(pooled, gate.conv.weight, padding=1) - 0.5)
    with torch.no_grad():
        torch.testing.assert_close(gate(t), expected)


@pytest.mark.parametrize("kernel_size", [3, 7])
@pytest.mark.parametrize("shape", [(2, 2, 9, 6, 5), (1, 3, 4, 7, 11), (1, 2, 8, 8, 2)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "spatial_axes_stored_d_h_w"])
def test_fft_conv3d_equals_conv3d_in_value_and_gradients(kernel_size, shape, layout):
    """The FFT convolution gives conv3d's output and gradients, axes shorter than the kernel included, whatever
    order the spatial axes are stored in (they are transformed in that order)."""
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    elif layout == "spatial_axes_stored_d_h_w":
        x = x.permute(0, 1, 4, 2, 3).contiguous().permute(0, 1, 3, 4, 2)
    x.requires_grad_(True)
    weight = torch.randn(1, shape[1], kernel_size, kernel_size, kernel_size, dtype=torch.float64, requires_grad=True)
    expected = torch.nn.functional.conv3d(x, weight, padding=kernel_size // 2)
    out = fft_conv3d(x, weight)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    upstream = torch.randn_like(expected)
    for got, want in zip(
        torch.autograd.grad(out, (x, weight), upstream), torch.autograd.grad(expected, (x, weight), upstream)
    ):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_fft_conv3d_with_several_output_channels_and_an_anisotropic_kernel():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 10, 7, 5, dtype=torch.float64)
    weight = torch.randn(4, 3, 5, 3, 7, dtype=torch.float64)
    expected = torch.nn.functional.conv3d(x, weight, padding=(2, 1, 3))
    torch.testing.assert_close(fft_conv3d(x, weight), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize(("n", "size"), [(1, 1), (7, 8), (31, 32), (38, 40), (262, 270), (125, 125)])
def test_fft_sizes_are_the_next_2_3_5_smooth_integer(n, size):
    assert fft_conv._fft_size(n) == size


def test_fft_conv3d_in_fp32_is_close_to_conv3d():
    torch.manual_seed(2)
    x, weight = torch.randn(1, 2, 40, 12, 9), torch.randn(1, 2, 7, 7, 7)
    expected = torch.nn.functional.conv3d(x, weight, padding=3)
    assert (fft_conv3d(x, weight) - expected).abs().max() < 1e-5 * expected.abs().max()


def test_fft_conv3d_transforms_half_precision_inputs_in_fp32():
    """bf16 inputs (autocast) are convolved in fp32, as pocketfft and cuFFT need, and come back in bf16."""
    torch.manual_seed(3)
    x, weight = torch.randn(1, 2, 9, 8, 6), torch.randn(1, 2, 3, 3, 3)
    half = x.to(torch.bfloat16).requires_grad_(True)
    out = fft_conv3d(half, weight)
    assert out.dtype == torch.bfloat16
    expected = torch.nn.functional.conv3d(half.detach().float(), weight, padding=1)
    assert (out.float() - expected).abs().max() <= 2**-8 * expected.abs().max()  # within one bf16 rounding
    out.float().sum().backward()
    assert half.grad.dtype == torch.bfloat16 and weight.grad is None


def test_attention_gate_uses_conv3d_on_the_meta_device_so_that_mac_counters_see_it():
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        gate, t = AttentionGate(kernel_size=7), torch.empty(1, 4, 6, 5, 3)
        with FlopCounterMode(display=False) as counter:
            gate(t)
    assert counter.get_total_flops() == 2 * (6 * 5 * 3) * 2 * 7**3  # one output channel, 2 inputs, 7³ taps


@pytest.mark.parametrize("momentum", [0.01, None])
def test_single_channel_batch_norm_equals_batchnorm3d_in_values_gradients_and_running_statistics(momentum):
    """Three training steps (batch statistics, running averages), then eval mode (running statistics)."""
    torch.manual_seed(5)
    bn = nn.BatchNorm3d(1, momentum=momentum).double()
    with torch.no_grad():
        bn.weight.fill_(1.3), bn.bias.fill_(-0.2)
    reference = copy.deepcopy(bn)
    for step in range(3):
        x = (torch.randn(2, 1, 5, 4, 3, dtype=torch.float64) * (step + 1) + step).requires_grad_(True)
        out, expected = single_channel_batch_norm(bn, x), reference(x)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
        upstream = torch.randn_like(out)
        got = torch.autograd.grad(out, (x, bn.weight, bn.bias), upstream)
        want = torch.autograd.grad(expected, (x, reference.weight, reference.bias), upstream)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        for a, b in zip(bn.buffers(), reference.buffers(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-14)
    assert int(bn.num_batches_tracked) == 3
    bn.eval(), reference.eval()
    x = torch.randn(1, 1, 3, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(single_channel_batch_norm(bn, x), reference(x), rtol=0, atol=1e-12)


def test_single_channel_batch_norm_of_bf16_normalises_in_fp32_and_returns_bf16():
    torch.manual_seed(6)
    bn, x = nn.BatchNorm3d(1), (torch.randn(2, 1, 6, 5, 4) * 50 + 300).to(torch.bfloat16)
    out = single_channel_batch_norm(bn, x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), nn.BatchNorm3d(1)(x.float()), rtol=0, atol=2e-2)
    assert bn.running_mean.dtype == torch.float32 and 25 < float(bn.running_mean) < 35  # 0.1 × ~300


def test_single_channel_batch_norm_rejects_a_single_value_in_training():
    with pytest.raises(ValueError, match="more than 1 value"):
        single_channel_batch_norm(nn.BatchNorm3d(1), torch.randn(1, 1, 1, 1, 1))


def _autograd_pooling(x: torch.Tensor, d: int) -> torch.Tensor:
    return torch.stack([x.amax(dim=d), x.mean(dim=d)], dim=1)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dims", [(1,), (3,), (1, 2, 3, 4), (4, 2)])
def test_max_mean_pool_matches_autograd_in_value_gradient_and_layout(dims, channels_last):
    """One-pass backward = autograd's of amax and mean (no ties in random data); unused outputs get no gradient."""
    torch.manual_seed(3)
    x = torch.randn(2, 5, 6, 4, 3, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_(True)
    pooled = max_mean_pool(x, dims)
    expected = [_autograd_pooling(x, d) for d in dims]
    assert [tuple(p.shape) for p in pooled] == [tuple(e.shape) for e in expected]
    for p, e in zip(pooled, expected, strict=True):
        torch.testing.assert_close(p, e, rtol=0, atol=1e-12)
    upstream = [torch.randn_like(e) for e in expected]
    used = slice(0, max(1, len(dims) - 1))  # the last output unused when there are several
    (grad,) = torch.autograd.grad(pooled[used], x, upstream[used])
    (want,) = torch.autograd.grad(expected[used], x, upstream[used])
    torch.testing.assert_close(grad, want, rtol=0, atol=1e-12)
    assert grad.is_contiguous(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)
    with torch.no_grad():
        for p, e in zip(max_mean_pool(x, dims), expected, strict=True):
            torch.testing.assert_close(p, e, rtol=0, atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True])
def test_max_mean_pool_at_ties_gives_the_gradient_to_the_first_tied_element(channels_last):
    """At ties (integer data) values and gradients are those of ``torch.max(dim)``, whose index is the first."""
    torch.manual_seed(7)
    x = torch.randint(0, 3, (2, 8, 6, 4, 3), dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_(True)
    dims = (1, 2, 3, 4)
    pooled = max_mean_pool(x, dims)
    expected = [torch.stack([x.max(dim=d).values, x.mean(dim=d)], dim=1) for d in dims]
    upstream = [torch.randn_like(e) for e in expected]
    (grad,) = torch.autograd.grad(pooled, x, upstream)
    (want,) = torch.autograd.grad(expected, x, upstream)
    torch.testing.assert_close(grad, want, rtol=0, atol=1e-12)
    for d in dims:
        tied = x == x.amax(dim=d, keepdim=True)
        assert int(tied.sum(dim=d).max()) > 1  # the data has ties along d
        positions = torch.arange(x.shape[d]).view(-1, *([1] * (x.dim() - d - 1)))
        assert torch.equal(x.max(dim=d).indices, torch.where(tied, positions, x.shape[d]).amin(dim=d))


def test_max_mean_pool_backward_runs_through_a_nan():
    """A NaN (a diverged step) propagates to the pooled values; the backward does not index out of range."""
    x = torch.randn(1, 4, 3, 3, 2)
    x[0, 2, 1, 1, 0] = float("nan")
    x.requires_grad_(True)
    pooled = max_mean_pool(x, (1, 2))
    assert pooled[0][0, 0, 1, 1, 0].isnan() and pooled[1][0, 0, 2, 1, 0].isnan()
    (grad,) = torch.autograd.grad(pooled, x, [torch.ones_like(p) for p in pooled])
    assert grad.shape == x.shape


def _reference_quadruplet(att: QuadrupletAttention, x: torch.Tensor) -> torch.Tensor:
    """The formula with plain autograd ops: ¼ Σ_g G_g(x permuted), G(t) = t · sigmoid(BN(conv3d([max, mean])))."""

    def gate(g: AttentionGate, t: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([t.amax(dim=1, keepdim=True), t.mean(dim=1, keepdim=True)], dim=1)
        return t * torch.sigmoid(g.bn(torch.nn.functional.conv3d(pooled, g.conv.weight, padding=g.conv.padding)))

    out = gate(att.spatial_gate, x)
    for perm, g in zip(att._PERMUTATIONS, att.axis_gates, strict=True):
        out = out + gate(g, x.permute(perm)).permute(perm)
    return out / 4


@pytest.mark.parametrize("channels_last", [False, True])
def test_quadruplet_attention_equals_the_formula_in_value_and_all_gradients(channels_last):
    """The fused form (pool once, sum the broadcast factors, one product) = the four gates of the formula."""
    att, x = fp64_attention_case(4, channels_last)
    reference = copy.deepcopy(att)
    x.requires_grad_(True)
    out, expected = att(x), _reference_quadruplet(reference, x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert out.is_contiguous(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)
    upstream = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, *att.parameters()), upstream)
    want = torch.autograd.grad(expected, (x, *reference.parameters()), upstream)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    for a, b in zip(att.buffers(), reference.buffers(), strict=True):  # BN running statistics
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    att.eval(), reference.eval()
    with torch.no_grad():
        out = att(x)
        torch.testing.assert_close(out, _reference_quadruplet(reference, x), rtol=0, atol=1e-12)
    assert out.is_contiguous(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_traced_quadruplet_attention_is_valid_for_other_sizes():
    """Traced at one size, the export gives the eager values at another, where eager halves W fewer times."""
    torch.manual_seed(8)
    att = QuadrupletAttention(kernel_size=3).eval()
    with torch.no_grad():
        traced = torch.jit.trace(att, torch.randn(1, 4, 5, 8, 3), check_trace=False)
        x = torch.randn(1, 4, 5, 6, 3)  # W: 8 -> 4 -> 2 -> 1 when traced; 6 -> 3 here
        torch.testing.assert_close(traced(x), att(x), rtol=1e-5, atol=1e-6)


def test_spatial_gate_starts_at_zero_scale():
    """MAProtoNet zero-initialises the BN scale of its plain spatial (HWD) gate only (peers.md §3)."""
    att = QuadrupletAttention()
    assert torch.equal(att.spatial_gate.bn.weight, torch.zeros(1))
    assert all(torch.equal(g.bn.weight, torch.ones(1)) for g in att.axis_gates)
    assert att.spatial_gate.bn.momentum == 0.01 and att.spatial_gate.conv.kernel_size == (7, 7, 7)


@pytest.mark.parametrize("branch", [0, 1, 2, 3])
def test_each_quadruplet_branch_pools_over_its_own_axis(branch):
    """Branches pool over H, W, D (the axis gates) and C (the spatial gate); the output is their mean.

    Silencing three gates (sigmoid(-100) ~ 0) isolates one: 4 * out / x is its gate, constant along the
    pooled axis and varying along the others.
    """
    torch.manual_seed(branch)
    att = QuadrupletAttention(kernel_size=3).eval()
    gates = [*att.axis_gates, att.spatial_gate]
    for i, g in enumerate(gates):
        _set_gate(g, 1.0, 0.0 if i == branch else -100.0)
    x = torch.rand(1, 4, 5, 6, 7) + 0.5
    with torch.no_grad():
        ratio = 4 * att(x) / x  # the isolated gate's sigmoid, (1, C, H, W, D)
    pooled_axis = {0: 2, 1: 3, 2: 4, 3: 1}[branch]
    assert ratio.min() > 0 and ratio.max() < 1
    torch.testing.assert_close(ratio, ratio.mean(dim=pooled_axis, keepdim=True).expand_as(ratio))
    for axis in {1, 2, 3, 4} - {pooled_axis}:
        assert (ratio - ratio.mean(dim=axis, keepdim=True)).abs().max() > 1e-3


def test_quadruplet_attention_is_the_mean_of_its_four_gates():
    att = QuadrupletAttention(kernel_size=3).eval()
    biases = [0.3, -0.7, 1.1, 0.0]
    for g, b in zip([*att.axis_gates, att.spatial_gate], biases, strict=True):
        _set_gate(g, 0.0, b)  # zero scale: each gate is the constant sigmoid(b)
    x = torch.randn(2, 3, 4, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(att(x), x * torch.sigmoid(torch.tensor(biases)).mean())
