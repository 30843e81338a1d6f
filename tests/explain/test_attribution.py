import pytest
import torch

from monai_protoshare.explain.attribution import (
    class_attribution,
    occlusion_attribution,
    prototype_class_maps,
    prototype_maps,
    prototype_scale_maps,
    upsample_to,
)
from monai_protoshare.networks import PrototypeOutput, build_network
from tests.toy_data import TINY_NET


def _shared_net():
    net = build_network("um_protoshare", **TINY_NET)  # scales (1, 2, 3) with (9, 15, 6) prototypes
    with torch.no_grad():
        w = torch.full((2, 30), -1.0)
        w[0, [0, 1]] = 1.0  # class 0: prototypes 0, 1 at scale 1 ...
        w[0, 9] = 2.0  # ... and 9 at scale 2; none at scale 3
        w[1, [2, 25, 29]] = 0.5  # class 1: prototype 2 at scale 1, 25 and 29 at scale 3 (24..29)
        net.classifier.weight.copy_(w)
    return net


def _output(net, sizes=((8, 8, 4), (4, 4, 2), (2, 2, 1)), seed=0):
    g = torch.Generator().manual_seed(seed)
    attention = []
    masks = []
    for k, size in zip(net.prototypes_per_scale, sizes):
        m = torch.rand(1, k, *size, generator=g)
        masks.append(m)  # eq. 12's M¹
        attention.append(m / m.sum(dim=(2, 3, 4), keepdim=True))  # eq. 13: every map sums to 1
    return PrototypeOutput(logits=torch.zeros(1, 2), similarities=torch.zeros(1, 30), attention=attention, masks=masks)


def test_eq28_mean_over_supporting_prototypes_density_rescaled_and_summed():
    net = _shared_net()
    out = _output(net)
    scale_maps = prototype_scale_maps(net, out, torch.tensor([0]))
    a = out.attention
    expected = [(a[0][:, [0, 1]].mean(1) * 8 * 8 * 4), (a[1][:, [0]].mean(1) * 4 * 4 * 2), torch.zeros(1, 2, 2, 1)]
    for got, want in zip(scale_maps, expected):
        torch.testing.assert_close(got[:, 0], want)
    # density rescaling: each scale's mean map averages to 1 over its voxels (uniform attention = 1)
    assert scale_maps[0].mean().item() == pytest.approx(1.0, abs=1e-5)
    total = prototype_class_maps(net, out, torch.tensor([0]), (16, 16, 8))
    torch.testing.assert_close(total, sum(upsample_to(m, (16, 16, 8)) for m in scale_maps))
    assert total.shape == (1, 1, 16, 16, 8)


def test_class_maps_use_only_prototypes_with_positive_zeta_for_that_class():
    net = _shared_net()
    out = _output(net)
    maps = prototype_scale_maps(net, out, torch.tensor([1]))
    torch.testing.assert_close(maps[0][:, 0], out.attention[0][:, 2] * 256)
    assert torch.all(maps[1] == 0)  # no scale-2 prototype supports class 1
    torch.testing.assert_close(maps[2][:, 0], out.attention[2][:, [1, 5]].mean(1) * 4)


def test_class_specific_maps_average_owned_prototypes_eq26():
    net = build_network("mprotonet", **TINY_NET)
    g = torch.Generator().manual_seed(1)
    m = torch.rand(2, 30, 2, 2, 1, generator=g)
    out = PrototypeOutput(logits=torch.zeros(2, 2), similarities=torch.zeros(2, 30), attention=[m])
    maps = prototype_scale_maps(net, out, torch.tensor([0, 1]))[0]
    torch.testing.assert_close(maps[0, 0], m[0, :15].mean(0) * 4)
    torch.testing.assert_close(maps[1, 0], m[1, 15:].mean(0) * 4)


def test_protopnet_maps_keep_each_prototypes_top_alpha_voxels():
    net = build_network("protopnet", **TINY_NET)
    sims = torch.zeros(1, 30, 10, 10, 2)  # 200 voxels: top 1 % = 2 voxels
    sims[0, 0, 0, 0, 0], sims[0, 0, 5, 5, 1], sims[0, 0, 9, 9, 1] = 0.9, 0.8, 0.7
    sims[0, 20, 3, 3, 0] = 0.6
    out = PrototypeOutput(logits=torch.zeros(1, 2), similarities=torch.zeros(1, 30), attention=[sims])
    m = prototype_scale_maps(net, out, torch.tensor([0]))[0][0, 0] / 200 * 15
    assert m[0, 0, 0] == pytest.approx(0.9) and m[5, 5, 1] == pytest.approx(0.8)
    assert m[9, 9, 1] == 0 and m[3, 3, 0] == 0  # third best and another class's prototype dropped


def test_class_map_conventions_eq28_literal_density_and_eq12():
    net = _shared_net()
    out = _output(net)
    target = torch.tensor([0])
    a, m1 = out.attention, out.masks
    # eq. 28 as written: the mean of the eq.-13 maps of K+ per scale, upsampled and summed
    literal = prototype_class_maps(net, out, target, (16, 16, 8), class_map="eq28")
    expected = upsample_to(a[0][:, [0, 1]].mean(1, keepdim=True), (16, 16, 8)) + upsample_to(a[1][:, [0]], (16, 16, 8))
    torch.testing.assert_close(literal, expected)
    # density: the same maps x each scale's voxel count; eq12: the maps before L1 normalisation
    density, eq12 = (prototype_maps(net, out, c) for c in ("density", "eq12"))
    for s, n in enumerate((256, 32, 4)):
        torch.testing.assert_close(density[s], a[s] * n)
        torch.testing.assert_close(eq12[s], m1[s])
    eq12_class = prototype_scale_maps(net, out, target, class_map="eq12")
    torch.testing.assert_close(eq12_class[1][:, 0], m1[1][:, 0])
    with pytest.raises(ValueError, match="density"):
        prototype_maps(net, out, "densty")


def test_protopnet_whole_similarity_map_convention():
    net = build_network("protopnet", **TINY_NET)
    sims = torch.rand(1, 30, 10, 10, 2, generator=torch.Generator().manual_seed(0))
    out = PrototypeOutput(logits=torch.zeros(1, 2), similarities=torch.zeros(1, 30), attention=[sims])
    whole = prototype_scale_maps(net, out, torch.tensor([1]), class_map="eq28", protopnet_map="similarity")[0]
    torch.testing.assert_close(whole[:, 0], sims[:, 15:].mean(1))
    top = prototype_scale_maps(net, out, torch.tensor([1]), class_map="eq28")[0]
    assert (top > 0).sum() <= 15 * 2 < (whole > 0).sum()  # at most 2 voxels per prototype survive top-α
    # one scale, no L1 step: every class-map reading gives the same map up to a constant factor
    for c in ("density", "eq12"):
        scaled = prototype_scale_maps(net, out, torch.tensor([1]), class_map=c)[0]
        torch.testing.assert_close(scaled / scaled.max(), top / top.max())


@pytest.mark.parametrize("name", ["um_protoshare", "protopnet", "xprotonet", "maprotonet", "cnn"])
def test_attribution_has_the_input_shape(name):
    kwargs = dict(TINY_NET)
    if name == "maprotonet":
        kwargs.update(encoder_layers=(1,), encoder_widths=(4,))
    net = build_network(name, **kwargs)
    maps = class_attribution(net, torch.randn(2, 4, 16, 16, 8), torch.tensor([0, 1]))
    assert maps.shape == (2, 1, 16, 16, 8) and torch.isfinite(maps).all()


def test_gradcam_of_the_cnn_is_normalised_at_input_size():
    torch.manual_seed(0)
    net = build_network("cnn", **TINY_NET)
    gradcam = class_attribution(net, torch.randn(2, 4, 16, 16, 8), torch.tensor([1, 0]), method="gradcam")
    assert gradcam.shape == (2, 1, 16, 16, 8) and 0 <= gradcam.min() and gradcam.max() <= 1


class CubeNet(torch.nn.Module):
    """Class-1 logit = sum of T1-CE inside a cube; the class-0 logit is constant."""

    def forward(self, x):
        score = x[:, 1, 10:14, 10:14, 4:8].sum(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(score), score], dim=1)


def test_occlusion_is_the_target_logit_drop_and_zero_far_from_the_evidence():
    x = torch.ones(1, 4, 24, 24, 12)
    maps = occlusion_attribution(CubeNet(), x, torch.tensor([1]), window=5, stride=2)
    assert maps.shape == (1, 1, 24, 24, 12)
    assert maps[0, 0, 12, 12, 6] > 0  # occluding the cube lowers the class-1 logit
    assert torch.all(maps[0, 0, :4, :4] == 0)  # windows there never touch the cube
    assert torch.all(occlusion_attribution(CubeNet(), x, torch.tensor([0]), window=5, stride=2) == 0)
