"""`evaluating`: eval mode for a block, gradients kept, every submodule's own mode restored."""

import pytest
import torch
from torch import nn

from monai_protoshare.explain.attribution import class_attribution
from monai_protoshare.networks import build_network
from monai_protoshare.networks.modes import evaluating


def test_eval_inside_grad_kept_and_each_submodule_mode_restored_even_on_error():
    net = nn.Sequential(nn.Conv3d(1, 2, 1), nn.BatchNorm3d(2), nn.Dropout(0.5))
    net.train()
    net[1].eval()  # a frozen part kept in eval inside a training network
    with pytest.raises(RuntimeError, match="boom"), evaluating(net) as inside:
        assert inside is net and not any(m.training for m in net.modules())
        x = torch.ones(1, 1, 2, 2, 2, requires_grad=True)
        net(x).sum().backward()
        assert x.grad is not None  # gradients stay on (Grad-CAM needs them)
        raise RuntimeError("boom")
    assert [m.training for m in net.modules()] == [True, True, False, True]


def test_class_attribution_leaves_the_callers_mode():
    net = build_network("cnn", encoder_layers=(1, 1), encoder_widths=(4, 8), embedding_dim=8)
    net.train()
    maps = class_attribution(net, torch.randn(2, 4, 16, 16, 8), torch.tensor([0, 1]))
    assert maps.shape == (2, 1, 16, 16, 8)
    assert all(m.training for m in net.modules())
