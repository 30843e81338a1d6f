"""The CNN baseline and warm-up model (App. F.1, D.5): GAP head, sharing with a prototype network, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from network_cases import PROTOTYPE_MODELS, build, tiny_input

from monai_protoshare.networks import CNNClassifier, GAPClassifierHead


def test_gap_head_is_a_convex_scale_combination_then_a_bias_free_linear_layer():
    torch.manual_seed(0)
    head = GAPClassifierHead(embedding_dim=4, num_scales=3)
    assert head.fc.bias is None and torch.equal(head.scale_logits.detach(), torch.zeros(3))  # 1/3 each at the start
    feats = [torch.randn(2, 4, *s) for s in [(4, 4, 2), (2, 2, 1), (1, 1, 1)]]
    with torch.no_grad():
        head.scale_logits.copy_(torch.tensor([0.0, 1.0, -1.0]))
        logits = head(feats)
    w = torch.softmax(torch.tensor([0.0, 1.0, -1.0]), dim=0)
    pooled = sum(wi * g.mean(dim=(2, 3, 4)) for wi, g in zip(w, feats, strict=True))
    torch.testing.assert_close(logits, pooled @ head.fc.weight.t())


def test_cnn_forward_is_head_of_add_on_features(cpu_small_models):
    net = cpu_small_models["cnn"]
    x = tiny_input()
    with torch.no_grad():
        fused = net.backbone(x)
        feats = [a(fused[s - 1]) for a, s in zip(net.add_ons, net.scales, strict=True)]
        torch.testing.assert_close(net(x), net.head(feats))
    assert [tuple(g.shape) for g in feats] == [(2, 32, 16, 16, 12), (2, 32, 8, 8, 6), (2, 32, 4, 4, 3)]


def test_sharing_reuses_the_prototype_networks_modules():
    net = build("um_protoshare_e2")
    cnn = CNNClassifier.sharing(net)
    assert cnn.backbone is net.backbone and cnn.add_ons is net.add_ons and cnn.scales == net.scales
    assert cnn.parameter_groups()["encoder"] == net.parameter_groups()["encoder"]


@pytest.mark.parametrize("name", PROTOTYPE_MODELS)
def test_warm_up_gradients_reach_exactly_the_cnns_parameters(name):
    """Warm-up (App. D.5) trains encoder, decoder, add-ons and the GAP head; the prototype network's mapping
    modules, prototypes and classifier receive nothing."""
    net = build(name).train()
    if name == "maprotonet":  # zero-γ spatial gates give their conv an exactly zero gradient at the start
        for m in net.modules():
            if type(m).__name__ == "QuadrupletAttention":
                torch.nn.init.ones_(m.spatial_gate.bn.weight)
    cnn = CNNClassifier.sharing(net).train()
    F.cross_entropy(cnn(tiny_input()), torch.tensor([0, 1])).backward()
    single_scale = len(net.scales) == 1
    for group, params in cnn.parameter_groups().items():
        for j, p in enumerate(params):
            if single_scale and p is cnn.head.scale_logits:
                # softmax over one scale is constantly 1: this weight can never learn
                assert torch.equal(p.grad, torch.zeros(1))
                continue
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{group}[{j}] got no gradient"
    groups = net.parameter_groups()
    for group in ("mapping", "prototypes", "classifier"):
        assert all(p.grad is None for p in groups[group]), group


def test_cnn_errors():
    net = build("um_protoshare_e2")
    with pytest.raises(ValueError, match="one add-on per active scale"):
        CNNClassifier(net.backbone, net.add_ons[:2], (1, 2, 3))
    with pytest.raises(ValueError, match=r"scales must lie within 1\.\.3"):
        CNNClassifier.build(encoder_layers=(1, 1), encoder_widths=(16, 32), embedding_dim=8, scales=(2, 4))
