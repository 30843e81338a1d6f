"""ProtoSeg network (issue 23): shared-weight ASPP, non-negative sparse layer, push, voxel explanation, losses."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from monai_protoshare.losses.segmentation import ProtoSegLoss, jeffreys_diversity_loss
from monai_protoshare.networks import build_network
from monai_protoshare.networks.proto_seg import ProtoSegNetwork, SharedWeightASPP
from monai_protoshare.workflows.seg_push import push_and_save, push_segmentation_prototypes

TINY = {"encoder_layers": [1], "encoder_widths": [4], "embedding_dim": 6, "num_prototypes": 5}


def _net(seed: int = 0, **extra) -> ProtoSegNetwork:
    torch.manual_seed(seed)
    return build_network("proto_seg", **{**TINY, **extra})


def test_aspp_branches_are_one_convolution_at_several_dilations():
    torch.manual_seed(0)
    aspp = SharedWeightASPP(3, 4, dilations=(1, 2, 3)).eval()
    assert [name for name, _ in aspp.named_parameters()] == ["weight", "norm.weight", "norm.bias"]
    assert sum(p.numel() for p in aspp.parameters()) == sum(
        p.numel() for p in SharedWeightASPP(3, 4, (1,)).parameters()
    )
    x = torch.randn(1, 3, 7, 6, 5)
    out = aspp(x)
    for s, d in enumerate((1, 2, 3)):  # each branch = the SAME kernel at its dilation
        expected = F.relu(aspp.norm(F.conv3d(x, aspp.weight, padding=d, dilation=d)))
        assert torch.allclose(out[:, s], expected, atol=1e-6)
    out[:, 2].sum().backward()  # the largest dilation alone still trains the one shared kernel
    assert aspp.weight.grad is not None and aspp.weight.grad.abs().sum() > 0


def test_forward_shapes_and_bad_input():
    net = _net()
    out = net.forward_features(torch.randn(2, 4, 16, 16, 8))
    assert out.logits.shape == (2, 3, 16, 16, 8) and out.similarities.shape == (2, 5, 4, 4, 2)
    assert out.scale_similarities.shape == (2, 3, 5, 4, 4, 2) and out.features.shape == (2, 3, 6, 4, 4, 2)
    assert (out.similarities >= 0).all()
    assert torch.allclose(out.similarities, F.relu(out.scale_similarities.amax(dim=1)))
    with pytest.raises(ValueError, match="multiple of 4"):
        net(torch.zeros(1, 4, 10, 16, 8))
    with pytest.raises(ValueError, match="T1-CE"):
        net(torch.zeros(1, 3, 16, 16, 8))
    with pytest.raises(ValueError, match="scale_pooling|mean"):
        _net(scale_pooling="median")


def test_sparse_layer_stays_non_negative_after_optimizer_steps():
    net = _net()
    optimiser = torch.optim.SGD([net.last_layer_weight], lr=1.0)
    x = torch.randn(1, 4, 16, 16, 8)
    for _ in range(3):  # minimising the logits drives every raw weight below 0
        optimiser.zero_grad()
        net(x).sum().backward()
        optimiser.step()
    assert (net.last_layer_weight < 0).any()
    assert (net.region_weights >= 0).all() and (net.region_weights == 0).any()
    out = net.forward_features(x)
    coarse = torch.einsum("bkhwd,rk->brhwd", out.similarities, net.last_layer_weight.clamp(min=0))
    expected = F.interpolate(coarse + net.last_layer_bias.view(1, -1, 1, 1, 1), size=x.shape[2:], mode="trilinear")
    assert torch.allclose(out.logits, expected, atol=1e-5)


def test_push_leaves_each_prototype_equal_to_a_training_voxel_feature():
    net = _net()
    torch.manual_seed(1)
    cases = [
        {"image": torch.randn(2, 4, 16, 16, 8), "subject_id": [f"case{2 * i}", f"case{2 * i + 1}"]} for i in range(2)
    ]
    provenance = push_segmentation_prototypes(net, cases)
    assert net.training  # mode restored
    net.eval()
    with torch.no_grad():
        features = torch.cat([net.forward_features(c["image"]).features for c in cases])  # (4, S, E, h, w, d)
    rows = features.movedim(2, -1).reshape(-1, features.shape[2])
    for k, record in enumerate(provenance):
        distances = (rows - net.prototypes[k]).abs().amax(dim=1)
        assert distances.min() < 1e-6
        b = int(record["subject_id"].removeprefix("case"))
        s = net.aspp.dilations.index(record["dilation"])
        assert torch.allclose(features[b, s][(slice(None), *record["voxel"])], net.prototypes[k], atol=1e-6)
        assert record["similarity"] <= 1.0 + 1e-6
    with torch.no_grad():  # every prototype now matches its source voxel exactly
        cosine = net.forward_features(cases[0]["image"]).scale_similarities
    assert cosine.amax(dim=(0, 1, 3, 4, 5)).max() == pytest.approx(1.0, abs=1e-5)


def test_explain_voxel_contributions_sum_to_the_logit():
    net = _net().eval()
    x = torch.randn(1, 4, 16, 16, 8)
    explanation = net.explain_voxel(x, (3, 9, 5), top_k=5)
    assert explanation.prototypes.shape == (3, 5)
    assert torch.allclose(explanation.contributions.sum(dim=1) + net.last_layer_bias, explanation.logits, atol=1e-5)
    assert (explanation.contributions[:, :-1] >= explanation.contributions[:, 1:]).all()  # sorted, largest first
    top = net.explain_voxel(x, (3, 9, 5), top_k=2)
    assert torch.equal(top.prototypes, explanation.prototypes[:, :2])


def test_jeffreys_diversity_matches_the_formula():
    assert jeffreys_diversity_loss(torch.ones(2, 3, 2, 2, 2)) == pytest.approx(1.0)
    s = torch.rand(1, 2, 3, 2, 2)
    v = torch.softmax(s.flatten(2) / 0.5, dim=2)[0]
    kl = lambda p, q: (p * (p / q).log()).sum()  # noqa: E731
    expected = torch.exp(-(kl(v[0], v[1]) + kl(v[1], v[0])))
    assert jeffreys_diversity_loss(s, temperature=0.5) == pytest.approx(float(expected), rel=1e-5)
    apart = torch.zeros(1, 2, 4)
    apart[0, 0, 0] = apart[0, 1, 3] = 1.0
    assert jeffreys_diversity_loss(apart, temperature=0.05) < 1e-6  # activations far apart: no penalty
    with pytest.raises(ValueError, match="K >= 2"):
        jeffreys_diversity_loss(torch.ones(1, 1, 4))


def test_protoseg_loss_terms_and_gradients():
    net = _net()
    loss = ProtoSegLoss(lambda: net.region_weights, lambda_l1=0.1, lambda_diversity=0.5)
    x = torch.randn(2, 4, 16, 16, 8)
    target = (torch.rand(2, 3, 16, 16, 8) > 0.8).float()
    terms = loss(net.forward_features(x), target)
    value = {name: float(term.detach()) for name, term in terms.items()}
    assert value["l1"] == pytest.approx(float(net.region_weights.detach().sum()))
    assert value["loss"] == pytest.approx(value["seg"] + 0.1 * value["l1"] + 0.5 * value["diversity"])
    terms["loss"].backward()
    assert all(p.grad is not None for p in (net.prototypes, net.last_layer_weight, net.aspp.weight))
    with pytest.raises(ValueError, match="region masks"):
        loss(net.forward_features(x), target[:, :2])


def test_push_and_save_refits_the_last_layer_and_writes_provenance(tmp_path):
    net = _net()
    torch.manual_seed(2)
    seg = torch.zeros(2, 3, 16, 16, 8)
    seg[:, :, 4:12, 4:12, 2:6] = 1
    cases = [{"image": torch.randn(2, 4, 16, 16, 8), "seg": seg, "subject_id": ["a", "b"]}]
    before = net.last_layer_weight.detach().clone()
    push_and_save(net, cases, tmp_path, tmp_path / "model.pt", last_layer_epochs=3, last_layer_lr=0.1)
    assert not torch.equal(net.last_layer_weight, before) and (net.last_layer_weight >= 0).all()
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert torch.equal(state["last_layer_weight"], net.last_layer_weight.detach())
    provenance = json.loads((tmp_path / "prototypes.json").read_text())["prototypes"]
    assert [p["subject_id"] in ("a", "b") for p in provenance] == [True] * 5
