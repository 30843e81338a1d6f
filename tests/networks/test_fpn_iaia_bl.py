"""FPN-IAIA-BL (seed 003): eq. (1) pyramid, eq. (2)-(3) focal cosine similarity, prototype configuration S."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from monai_protoshare.networks import FPNIAIABL, FeaturePyramid, build_network, focal_similarity

SMALL = {"encoder_layers": (1, 1), "encoder_widths": (4, 8), "embedding_dim": 8}


@pytest.mark.parametrize("fraction,k", [(0.04, 9), (0.01, 3), (1e-4, 1), (1.0, 210)])
def test_focal_similarity_matches_a_direct_top_k_loop(fraction, k):
    torch.manual_seed(0)
    maps = torch.rand(3, 4, 5, 6, 7) * 2 - 1  # 210 voxels: k = max(1, ceil(fraction * 210))
    expected = torch.empty(3, 4)
    for b in range(3):
        for j in range(4):
            values = sorted(maps[b, j].flatten().tolist(), reverse=True)
            expected[b, j] = sum(values[:k]) / k - sum(values) / len(values)
    torch.testing.assert_close(focal_similarity(maps, fraction), expected)


def test_pyramid_follows_eq1_at_every_level():
    torch.manual_seed(0)
    fpn = FeaturePyramid((4, 16, 32), 8)
    c = [torch.randn(2, 4, 8, 8, 6), torch.randn(2, 16, 4, 4, 3), torch.randn(2, 32, 2, 2, 2)]
    z = fpn(c)
    assert [tuple(t.shape) for t in z] == [(2, 8, 8, 8, 6), (2, 8, 4, 4, 3), (2, 8, 2, 2, 2)]
    z3 = fpn.laterals[2](c[2])
    z2 = fpn.smooths[0](F.interpolate(z3, size=(4, 4, 3), mode="nearest") + fpn.laterals[1](c[1]))  # top-down order
    z1 = fpn.smooths[1](F.interpolate(z2, size=(8, 8, 6), mode="nearest") + fpn.laterals[0](c[0]))
    for got, want in zip(z, (z1, z2, z3)):
        torch.testing.assert_close(got, want)


def test_levels_have_the_encoder_scales_and_prototypes_see_only_their_level():
    torch.manual_seed(0)
    net = FPNIAIABL(prototypes_per_level_class=((1, 2), (0, 0), (3, 1)), **SMALL).eval()
    x = torch.randn(2, 4, 32, 32, 24)
    out = net.explain(x)
    assert net.scales == (1, 3) and net.prototypes_per_scale == (3, 4)
    assert [tuple(a.shape) for a in out.attention] == [(2, 3, 16, 16, 12), (2, 4, 4, 4, 3)]
    assert [tuple(f.shape) for f in out.features] == [(2, 8, 16, 16, 12), (2, 8, 4, 4, 3)]
    # eq. (2): cosine of each level's z with that level's prototypes; eq. (3) with k = ceil(1 % of the voxels)
    z = out.features[1]
    p = net.prototypes.vectors[1]
    cos = torch.einsum("ke,behwd->bkhwd", F.normalize(p, dim=1), F.normalize(z, dim=1))
    torch.testing.assert_close(out.attention[1], cos)
    top = cos.flatten(2).max(dim=-1).values  # 4x4x3 = 48 voxels: k = ceil(0.48) = 1
    torch.testing.assert_close(out.similarities[:, 3:], top - cos.flatten(2).mean(dim=-1))
    torch.testing.assert_close(out.logits, out.similarities @ net.classifier.weight.t())
    # ownership (level-major, class-major within a level) and ProtoPNet's last-layer start
    expected = torch.tensor([[1, 0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0, 1]], dtype=torch.float)
    torch.testing.assert_close(net.prototype_class_identity, expected)
    torch.testing.assert_close(net.classifier.weight, expected - 0.5 * (1 - expected))


def test_descriptors_are_the_features_at_each_prototypes_best_voxel():
    torch.manual_seed(0)
    net = build_network("fpn_iaia_bl", **SMALL).eval()
    out = net.explain(torch.randn(1, 4, 32, 32, 24))
    for z, a, d in zip(out.features, out.attention, out.descriptors):
        best = a.flatten(2).argmax(dim=-1)[0]  # (K,)
        torch.testing.assert_close(d[0], z.flatten(2)[0][:, best].t())


def test_gradients_reach_pyramid_prototypes_and_encoder_not_the_warmup_head():
    torch.manual_seed(0)
    net = build_network("fpn_iaia_bl", **SMALL)
    warm = net.warmup_model()
    net(torch.randn(2, 4, 32, 32, 24)).sum().backward()
    groups = net.parameter_groups()
    for name in ("encoder", "add_ons", "prototypes", "classifier"):
        assert all(p.grad is not None for p in groups[name]), name
    assert groups["decoder"] == [] and groups["mapping"] == []
    assert all(p.grad is None for p in warm.head.parameters())
    assert warm(torch.randn(2, 4, 32, 32, 24)).shape == (2, 2)


@pytest.mark.parametrize(
    "counts,match",
    [
        (((5, 5), (5, 5)), r"prototypes_per_level_class needs one row per encoder level \(3"),
        (((5, 5), (5,), (5, 5)), r"prototypes_per_level_class\[1\] must hold 2 non-negative counts"),
        (((5, 5), (5, -1), (5, 5)), r"prototypes_per_level_class\[1\]"),
        (((5, 0), (5, 0), (5, 0)), r"prototypes_per_level_class gives class\(es\) \[1\] no prototype"),
        ((5, 5, 5), "prototypes_per_level_class must be a list of rows"),
    ],
)
def test_a_bad_prototype_configuration_names_the_field(counts, match):
    with pytest.raises(ValueError, match=match):
        build_network("fpn_iaia_bl", prototypes_per_level_class=counts, **SMALL)


def test_weights_of_another_configuration_are_refused():
    net = build_network("fpn_iaia_bl", **SMALL)
    other = build_network("fpn_iaia_bl", topk_fraction=0.5, **SMALL)
    with pytest.raises(RuntimeError, match="another model"):
        other.load_state_dict(net.state_dict())


@pytest.mark.parametrize("protopnet_map", ["topk", "similarity"])
def test_class_map_is_the_mean_of_own_prototypes_activation_maps_summed_over_levels(protopnet_map):
    from monai_protoshare.explain.attribution import prototype_class_maps

    torch.manual_seed(0)
    net = FPNIAIABL(prototypes_per_level_class=((1, 2), (0, 0), (3, 1)), **SMALL).eval()
    x, target = torch.randn(2, 4, 32, 32, 24), torch.tensor([0, 1])
    with torch.no_grad():
        out = net.explain(x)
        got = prototype_class_maps(net, out, target, (32, 32, 24), class_map="eq28", protopnet_map=protopnet_map)

    def up(m):
        return F.interpolate(m.mean(dim=1, keepdim=True), size=(32, 32, 24), mode="trilinear", align_corners=False)

    fine, coarse = out.attention  # level 1: class 0 owns prototype 0, class 1 owns 1-2; level 3: 0-2 and 3
    want = torch.cat([up(fine[:1, :1]) + up(coarse[:1, :3]), up(fine[1:, 1:3]) + up(coarse[1:, 3:])])
    torch.testing.assert_close(got, want)
