"""Decoder (App. A.1), encoder-decoder fusion (eq. 11; App. E.3) and MAProtoNet's multi-scale feature fusion."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from network_cases import tiny_input

from monai_protoshare.networks import (
    ConcatFusion,
    FeatureBackbone,
    GatedFusion,
    MultiScaleFeatureFusion,
    UNetStyleDecoder,
)

CHANNELS = (16, 64, 128)


def _features(sizes, batch: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, *s, generator=g) for c, s in zip(CHANNELS, sizes, strict=True)]


def test_decoder_blocks_are_conv3_bn_relu_with_the_reference_widths():
    dec = UNetStyleDecoder(CHANNELS)
    conv = dec.bottleneck[0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.bias) == (128, 128, (3, 3, 3), None)
    assert [(b[0].in_channels, b[0].out_channels) for b in dec.blocks] == [(64, 16), (128, 64)]
    assert all(
        type(b[1]).__name__ == "BatchNorm3d" and type(b[2]).__name__ == "ReLU" for b in [dec.bottleneck, *dec.blocks]
    )


@pytest.mark.parametrize("sizes", [[(16, 16, 12), (8, 8, 6), (4, 4, 3)], [(15, 17, 11), (8, 9, 6), (4, 5, 3)]])
def test_decoder_matches_encoder_shapes_and_is_bottleneck_then_upsample_conv(sizes):
    torch.manual_seed(0)
    dec = UNetStyleDecoder(CHANNELS).eval()
    feats = _features(sizes)
    with torch.no_grad():
        out = dec(feats)
        assert [tuple(o.shape) for o in out] == [tuple(f.shape) for f in feats]
        f3 = dec.bottleneck(feats[2])
        f2 = dec.blocks[1](F.interpolate(f3, size=sizes[1], mode="trilinear", align_corners=False))
        f1 = dec.blocks[0](F.interpolate(f2, size=sizes[0], mode="trilinear", align_corners=False))
    for got, expected in zip(out, [f1, f2, f3], strict=True):
        torch.testing.assert_close(got, expected)


def test_decoder_has_no_skip_connections():
    torch.manual_seed(0)
    dec = UNetStyleDecoder(CHANNELS).eval()
    sizes = [(16, 16, 12), (8, 8, 6), (4, 4, 3)]
    a, b = _features(sizes, seed=0), _features(sizes, seed=1)
    with torch.no_grad():
        out_a = dec(a)
        out_mixed = dec([b[0], b[1], a[2]])  # other fine features, same coarsest one
    for x, y in zip(out_a, out_mixed, strict=True):
        assert torch.equal(x, y)


# ---------------------------------------------------------------- gated fusion, eq. (11)


def test_gates_are_per_channel_in_open_unit_interval_and_follow_the_gate_module():
    torch.manual_seed(0)
    fuse = GatedFusion(64)
    enc, dec = torch.randn(3, 64, 5, 4, 3) * 5, torch.randn(3, 64, 5, 4, 3) * 5
    alpha = fuse.gates(enc, dec)
    assert alpha.shape == (3, 64, 1, 1, 1)
    assert alpha.min() > 0 and alpha.max() < 1
    # GAP of the concatenation -> conv1x1 (2C -> max(C/8, 4), bias) -> ReLU -> conv1x1 (-> C, bias) -> sigmoid
    first, last = fuse.gate[0], fuse.gate[2]
    assert (first.in_channels, first.out_channels, last.out_channels) == (128, 8, 64)
    assert first.bias is not None and last.bias is not None
    assert GatedFusion(16).gate[0].out_channels == 4
    pooled = torch.cat([enc, dec], dim=1).mean(dim=(2, 3, 4))  # (B, 2C)
    hidden = torch.relu(pooled @ first.weight.flatten(1).t() + first.bias)
    expected = torch.sigmoid(hidden @ last.weight.flatten(1).t() + last.bias)
    torch.testing.assert_close(alpha.flatten(1), expected)
    # the gates differ per case
    assert (alpha[0] - alpha[1]).abs().max() > 1e-4


def test_gated_fusion_is_eq_11():
    """F = α ⊙ f + (1 − α) ⊙ f̃ with α from the gate module, to float64 rounding."""
    torch.manual_seed(0)
    fuse = GatedFusion(16).double()
    enc, dec = torch.randn(2, 16, 4, 4, 3, dtype=torch.float64), torch.randn(2, 16, 4, 4, 3, dtype=torch.float64)
    alpha = fuse.gates(enc, dec)
    torch.testing.assert_close(fuse(enc, dec), alpha * enc + (1 - alpha) * dec, rtol=0, atol=1e-12)


def test_concat_fusion_is_a_linear_projection_of_the_concatenation():
    """App. E.3: concatenation then a 1x1x1 convolution back to C_s, no bias, no nonlinearity."""
    torch.manual_seed(0)
    fuse = ConcatFusion(16)
    assert fuse.project.bias is None and fuse.project.kernel_size == (1, 1, 1)
    enc, dec = torch.randn(2, 16, 4, 4, 3), torch.randn(2, 16, 4, 4, 3)
    w = fuse.project.weight.flatten(1)  # (C, 2C)
    expected = torch.einsum("oc,bchwd->bohwd", w[:, :16], enc) + torch.einsum("oc,bchwd->bohwd", w[:, 16:], dec)
    with torch.no_grad():
        torch.testing.assert_close(fuse(enc, dec), expected, rtol=1e-5, atol=1e-5)
        zeros = torch.zeros_like(enc)
        torch.testing.assert_close(fuse(2 * enc, -dec), 2 * fuse(enc, zeros) - fuse(zeros, dec), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("fusion", "fusion_type"), [("none", None), ("concat", ConcatFusion), ("gated", GatedFusion)])
def test_backbone_fuses_encoder_and_decoder_at_every_scale(fusion, fusion_type):
    torch.manual_seed(0)
    bb = FeatureBackbone(encoder_layers=(1, 1), encoder_widths=(16, 32), fusion=fusion).eval()
    x = tiny_input()
    with torch.no_grad():
        fused = bb(x)
        encoded = bb.encoder(x)
        if fusion_type is None:
            assert bb.decoder is None and bb.fusions is None and bb.decoder_parameters() == []
            expected = encoded
        else:
            assert all(isinstance(f, fusion_type) for f in bb.fusions)
            expected = [f(e, d) for f, e, d in zip(bb.fusions, encoded, bb.decoder(encoded), strict=True)]
    for got, exp in zip(fused, expected, strict=True):
        torch.testing.assert_close(got, exp)
    decoder_ids = {id(p) for p in bb.decoder_parameters()}
    modules = [m for m in (bb.decoder, bb.fusions) if m is not None]
    assert decoder_ids == {id(p) for m in modules for p in m.parameters()}


# ---------------------------------------------------------------- MAProtoNet's multi-scale feature fusion


def test_multiscale_feature_fusion_pools_the_stem_and_concatenates():
    """concat[AvgPool3d(3, 2, 1)(s1), MaxPool3d(3, 2, 1)(s1), s2]; at output voxel (0, 0, 0) the 3³ window
    covers input voxels 0..1 on each axis plus padding (counted by the average, as in PyTorch's default)."""
    fine, coarse = torch.randn(2, 3, 8, 8, 6), torch.randn(2, 5, 4, 4, 3)
    fusion = MultiScaleFeatureFusion((3, 5))
    out = fusion(fine, coarse)
    assert fusion.out_channels == 11 and out.shape == (2, 11, 4, 4, 3)
    corner = fine[:, :, :2, :2, :2]
    torch.testing.assert_close(out[:, :3, 0, 0, 0], corner.sum(dim=(2, 3, 4)) / 27)
    torch.testing.assert_close(out[:, 3:6, 0, 0, 0], corner.amax(dim=(2, 3, 4)))
    inner = fine[:, :, 1:4, 3:6, 1:4]  # output voxel (1, 2, 1): window centred on input (2, 4, 2)
    torch.testing.assert_close(out[:, :3, 1, 2, 1], inner.mean(dim=(2, 3, 4)))
    assert torch.equal(out[:, 6:], coarse)


def test_multiscale_feature_fusion_survives_sizes_that_crash_the_public_code():
    """peers.md §9: after a 0.875 rescale, pooled s1 (depth 21 -> 11) and s2 (depth 10) disagree."""
    out = MultiScaleFeatureFusion((3, 5))(torch.randn(1, 3, 28, 28, 21), torch.randn(1, 5, 14, 14, 10))
    assert out.shape == (1, 11, 14, 14, 10)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_multiscale_feature_fusion_keeps_a_channels_last_batch_of_one_channels_last(requires_grad):
    """In training too: a contiguous output would make the next convolution copy it, forward and backward (2 × 77 ms
    at MAProtoNet's paper size, two threads)."""
    layout = torch.channels_last_3d
    fine = torch.randn(1, 3, 8, 8, 6).contiguous(memory_format=layout).requires_grad_(requires_grad)
    coarse = torch.randn(1, 5, 4, 4, 3).contiguous(memory_format=layout).requires_grad_(requires_grad)
    out = MultiScaleFeatureFusion((3, 5))(fine, coarse)
    assert out.is_contiguous(memory_format=layout) and not out.is_contiguous()
