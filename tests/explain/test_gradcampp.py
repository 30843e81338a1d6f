"""Grad-CAM++ for the CNN baseline (FPN-IAIA-BL's comparison, Fig. 4): same layer as Grad-CAM, per-case class."""

import torch
from monai.visualize import GradCAMpp

from monai_protoshare.explain.attribution import class_attribution
from monai_protoshare.networks import build_network
from tests.toy_data import TINY_NET


def test_gradcampp_scores_each_cases_class_at_the_gradcam_layer():
    torch.manual_seed(0)
    net = build_network("cnn", **TINY_NET).eval()
    x, target = torch.randn(2, 4, 16, 16, 8), torch.tensor([1, 0])
    maps = class_attribution(net, x, target, method="gradcampp")
    assert maps.shape == (2, 1, 16, 16, 8) and 0 <= maps.min() and maps.max() <= 1
    cam = GradCAMpp(nn_module=net, target_layers="add_ons.0.act2")
    for b, c in enumerate(target.tolist()):
        torch.testing.assert_close(maps[b : b + 1], cam(x[b : b + 1], class_idx=c).detach())
    gradcam = class_attribution(net, x, target, method="gradcam")
    assert not torch.allclose(maps, gradcam)  # a different method, not Grad-CAM renamed
