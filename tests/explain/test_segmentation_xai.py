"""Seg-Grad-CAM, occlusion and Seg-Ablation-CAM (seed 004) against hand-built networks with known answers."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import SegResNet
from torch import nn

from monai_protoshare.explain.segmentation_xai import (
    region_of_interest,
    region_score,
    seg_ablation_cam,
    seg_grad_cam,
    seg_occlusion,
)
from monai_protoshare.networks import build_network

BOX = ((2, 6), (1, 5), (0, 3))


def _linear_net(seed: int = 0) -> nn.Sequential:
    """logits = W_head (W_feat x + b_feat) + b_head, voxel by voxel: 4 inputs -> 5 channels -> 3 regions."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv3d(4, 5, 1), nn.Conv3d(5, 3, 1)).eval()


def test_seg_grad_cam_of_a_linear_network_equals_its_analytic_gradient_map():
    net, x, region = _linear_net(), torch.randn(2, 4, 8, 6, 4), 1
    for roi in (BOX, torch.rand(8, 6, 4) > 0.5):
        cam = seg_grad_cam(net, x, layer="0", region=region, roi=roi)
        mask = region_of_interest(net(x), region, roi)  # (2, 1, 8, 6, 4)
        # y = Σ_{v∈M} Σ_c W_rc A_c(v) + b  =>  ∂y/∂A_c(u) = W_rc [u ∈ M],  α_c = W_rc |M| / N
        w = net[1].weight[region, :, 0, 0, 0].detach()
        alpha = w[None] * mask.flatten(1).sum(1)[:, None] / mask[0, 0].numel()
        expected = torch.relu(torch.einsum("bc,bchwd->bhwd", alpha, net[0](x).detach()))[:, None]
        assert cam.shape == (2, 1, 8, 6, 4)
        assert torch.allclose(cam, expected, atol=1e-5)


def test_seg_ablation_cam_of_a_linear_network_equals_its_analytic_weights():
    net, x, region = _linear_net(1), torch.randn(1, 4, 8, 6, 4), 2
    cam = seg_ablation_cam(net, x, layer="0", region=region, roi=BOX, batch_size=2)
    activation = net[0](x).detach()
    mask = region_of_interest(net(x), region, BOX)
    score = region_score(net(x), region, mask)
    # ablating channel c removes exactly Σ_{v∈M} W_rc A_c(v) from the score
    drop = (net[1].weight[region, :, 0, 0, 0, None] * (activation[0] * mask[0]).flatten(1)).sum(1).detach()
    expected = torch.relu(torch.einsum("c,chwd->hwd", drop / score.abs(), activation[0]))
    assert torch.allclose(cam[0, 0], expected, atol=1e-4)


class _IgnoresRightHalf(nn.Module):
    """A 3x3x3 conv network that multiplies its input by 0 on the right half (x >= 8) of the volume."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(4, 3, 3, padding=1)
        self.register_buffer("keep", (torch.arange(16) < 8).float().view(1, 1, 16, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x * self.keep)


def test_occluding_a_region_the_network_ignores_changes_nothing():
    net, x = _IgnoresRightHalf().eval(), torch.randn(1, 4, 16, 8, 8)
    occlusion = seg_occlusion(net, x, region=0, roi=torch.ones(16, 8, 8), window=4, batch_size=5)
    assert occlusion.shape == (1, 1, 16, 8, 8)
    assert torch.count_nonzero(occlusion[..., 8:, :, :]) == 0
    assert occlusion[..., :8, :, :].abs().amin() > 0  # every box the network sees moves the score
    # the map is the score change of each disjoint box, computed here one box at a time
    occluded = x.clone()
    occluded[..., 4:8, 0:4, 4:8] = 0
    full = torch.ones(1, 1, 16, 8, 8)
    change = region_score(net(x), 0, full) - region_score(net(occluded), 0, full)
    assert torch.allclose(occlusion[0, 0, 4:8, 0:4, 4:8], change.expand(4, 4, 4), atol=1e-4)


def test_region_of_interest_options_and_errors():
    logits = torch.tensor([-1.0, 2.0, 0.5, -3.0]).view(1, 1, 4, 1, 1).repeat(2, 2, 1, 1, 1)
    assert region_of_interest(logits, 1).flatten(1).tolist()[0] == [0, 1, 1, 0]
    box = region_of_interest(logits, 0, ((1, 3), (0, 1), (0, 1)))
    assert box.shape == (2, 1, 4, 1, 1) and box.flatten(1).tolist()[1] == [0, 1, 1, 0]
    assert region_score(logits, 1, box).tolist() == [2.5, 2.5]
    with pytest.raises(ValueError, match="roi box"):
        region_of_interest(logits, 0, ((0, 1),))
    with pytest.raises(ValueError, match="roi mask"):
        region_of_interest(logits, 0, torch.ones(3, 1, 1))
    with pytest.raises(ValueError, match="region in 0..R-1"):
        region_of_interest(logits, 2)
    with pytest.raises(ValueError, match="predicted"):
        region_of_interest(logits, 0, "predicted_region_x")


@pytest.mark.parametrize("name", ["segresnet", "proto_seg"])
def test_methods_run_on_monai_segresnet_and_proto_seg_layers(name):
    torch.manual_seed(0)
    if name == "segresnet":
        net, layer = (
            SegResNet(in_channels=4, out_channels=3, init_filters=8, blocks_down=(1, 1), blocks_up=(1,)),
            "up_layers.0",
        )
    else:  # the ASPP's output is (B, S, E, h, w, d): scales flattened into channels
        net, layer = (
            build_network("proto_seg", encoder_layers=[1], encoder_widths=[4], embedding_dim=4, num_prototypes=3),
            "aspp",
        )
    net.eval()
    x = torch.randn(1, 4, 16, 16, 8)
    for cam in (seg_grad_cam(net, x, layer, 1, BOX), seg_ablation_cam(net, x, layer, 1, BOX, batch_size=16)):
        assert cam.shape == (1, 1, 16, 16, 8) and torch.isfinite(cam).all() and (cam >= 0).all()
    assert seg_occlusion(net, x, 1, BOX, window=8).shape == (1, 1, 16, 16, 8)
    with pytest.raises(ValueError, match="aspp|up_layers"):
        seg_grad_cam(net, x, "no_such_layer", 1, BOX)
