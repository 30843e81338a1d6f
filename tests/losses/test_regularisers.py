import math

import pytest
import torch

from monai_protoshare.losses import (
    ClassifierStageLoss,
    LatentSpaceLoss,
    MappingLoss,
    classifier_l1_loss,
    mapping_loss,
    online_cam_loss,
    prototype_diversity_loss,
)
from monai_protoshare.networks import build_network

TINY = {"encoder_layers": (1, 1), "encoder_widths": (8, 16), "embedding_dim": 8}


def test_diversity_eq10_by_hand():
    s1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # pairs: 0, 1/sqrt2, 1/sqrt2
    s2 = torch.tensor([[1.0, 0.0], [2.0, 0.0]])  # one pair: 1
    expected = ((0 + 2 / math.sqrt(2)) / 3 + 1.0) / 2
    assert prototype_diversity_loss([s1, s2]).item() == pytest.approx(expected, abs=1e-6)
    # a single-prototype scale has no pair and does not count
    assert prototype_diversity_loss([s2, torch.ones(1, 2)]).item() == pytest.approx(1.0)


def test_l1_all_weights_or_wrong_class_only():
    w = torch.tensor([[1.0, -0.5, 2.0, -3.0], [-1.0, 0.25, 0.5, 4.0]])
    assert classifier_l1_loss(w).item() == pytest.approx(12.25)
    identity = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    assert classifier_l1_loss(w, identity).item() == pytest.approx(2.0 + 3.0 + 1.0 + 0.25)


def test_mapping_loss_zero_for_equivariant_maps_and_counts_sparsity():
    # a map that is linear in space commutes with trilinear resizing (align_corners=True)
    grid = torch.linspace(0, 1, 8)
    m = grid.view(1, 1, 8, 1, 1).expand(1, 2, 8, 8, 8).contiguous()
    rescaled = torch.nn.functional.interpolate(m, size=(6, 6, 6), mode="trilinear", align_corners=True)
    assert mapping_loss(m, rescaled, sparsity_weight=0.0).item() == pytest.approx(0.0, abs=1e-6)
    assert mapping_loss(m, rescaled, sparsity_weight=1.0).item() == pytest.approx(m.mean().item(), abs=1e-6)
    shifted = torch.roll(rescaled, 2, dims=2)
    assert mapping_loss(m, shifted, sparsity_weight=0.0).item() > 0.1


def test_mapping_loss_module_uses_explicit_sizes_for_odd_inputs():
    net = build_network("maprotonet", encoder_layers=(1,), encoder_widths=(8,), embedding_dim=8)
    out = net.explain(torch.randn(2, 4, 20, 20, 12))  # stride-4 size 5x5x3: 0.875 * 5 is not an integer
    for seed in range(4):  # both factors get drawn
        torch.manual_seed(seed)
        losses = MappingLoss()(net, out)
        assert len(losses) == 1 and torch.isfinite(losses[0])


def test_online_cam_loss_is_cross_entropy_per_scale():
    logits = [torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])]
    losses = online_cam_loss(logits, torch.tensor([0]))
    assert losses[0].item() == pytest.approx(math.log(1 + math.exp(-2)))
    assert losses[1].item() == pytest.approx(math.log(2))


def test_latent_space_loss_combines_terms_with_paper_weights():
    torch.manual_seed(0)
    net = build_network("um_protoshare", **TINY)
    out = net.explain(torch.randn(2, 4, 32, 32, 24))
    loss = LatentSpaceLoss()
    torch.manual_seed(1)
    terms = loss(net, out, torch.tensor([0, 1]))
    expected = (
        terms["cls"] + 0.8 * terms["clst"] + 0.08 * terms["sep"] + 0.5 * terms["map"] + 0.05 * terms["oc"]
        + 0.001 * terms["div"]
    )  # fmt: skip
    torch.testing.assert_close(terms["loss"], expected)
    torch.testing.assert_close(
        terms["oc"], torch.stack(online_cam_loss(out.online_cam_logits, torch.tensor([0, 1]))).mean()
    )
    torch.testing.assert_close(terms["div"], prototype_diversity_loss(list(net.prototypes.vectors)))
    assert all(torch.isfinite(v) for v in terms.values())


def test_classifier_stage_loss_eq21():
    net = build_network("mprotonet", **TINY)
    logits = torch.tensor([[1.0, -1.0]])
    terms = ClassifierStageLoss()(net, logits, torch.tensor([0]))
    # class-specific init: wrong-class weights are all -0.5 -> L1 = 30 * 0.5
    assert terms["l1"].item() == pytest.approx(15.0)
    assert terms["loss"].item() == pytest.approx(math.log(1 + math.exp(-2)) + 0.01 * 15.0, abs=1e-6)
