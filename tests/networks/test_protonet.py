"""PrototypeNetwork (paper §2.2, eq. 5, 14, 15, 18; App. F.1): the pipeline's values, ProtoPNet pooling,
class ownership, Online-CAM, training-stage gradients, state dicts, TorchScript and input errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from network_cases import DISTINCT_MODELS, PROTOTYPE_MODELS, build, tiny_input

CLASS_SPECIFIC = ["protopnet", "xprotonet", "mprotonet", "maprotonet", "um_protoshare_a1"]
SHARED = [n for n in PROTOTYPE_MODELS if n not in CLASS_SPECIFIC + ["fpn_iaia_bl"]]  # class- and level-specific
ONLINE_CAM = ["mprotonet", "maprotonet", "um_protoshare_a1", "um_protoshare_e2"]


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos(a, b) = a·b / (|a| |b|) over the last dimension."""
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def _randomise_batch_norm(net: torch.nn.Module, seed: int = 1) -> None:
    """Non-trivial BN running statistics and affine parameters, so eval-mode checks see every BN."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))


# ---------------------------------------------------------------- forward values


@pytest.mark.parametrize("name", PROTOTYPE_MODELS)
def test_explain_values_follow_eq_14_15_and_5(name, cpu_small_models):
    net = cpu_small_models[name]
    x = tiny_input()
    with torch.no_grad():
        out = net.explain(x)
        logits = net(x)
    torch.testing.assert_close(logits, out.logits)
    # eq. (5)/(18): y_c = sum_k w_ck S_k, no bias
    torch.testing.assert_close(out.logits, out.similarities @ net.classifier.weight.t())
    sims = []
    for i, (g, a, d) in enumerate(zip(out.features, out.attention, out.descriptors, strict=True)):
        p = net.prototypes.vectors[i].detach()
        if net.mapping == "none":
            continue  # ProtoPNet: test_protopnet_top_alpha_pooling
        # eq. (14): descriptor = mean over voxels of G ⊙ M_k
        torch.testing.assert_close(d, (a.unsqueeze(2) * g.unsqueeze(1)).mean(dim=(3, 4, 5)), rtol=1e-4, atol=1e-6)
        sims.append(_cosine(d, p.unsqueeze(0)))
        if net.mapping == "l1_soft":
            torch.testing.assert_close(a.sum(dim=(2, 3, 4)), torch.ones(a.shape[:2]), rtol=0, atol=1e-4)
    if sims:
        torch.testing.assert_close(out.similarities, torch.cat(sims, dim=1), rtol=1e-4, atol=1e-5)
    for m in out.masks:
        assert m.min() >= 0 and m.max() <= 1


def test_protopnet_top_alpha_pooling_equals_hand_computation(cpu_small_models):
    """App. F.1: S_k = mean of the top α = 1 % per-voxel cosine similarities; at 8x8x6 voxels, ceil(3.84) = 4."""
    net = cpu_small_models["protopnet"]
    with torch.no_grad():
        out = net.explain(tiny_input(batch=1, size=(64, 64, 48)))
    g = out.features[0][0].flatten(1).t().double()  # (V, E)
    assert g.shape[0] == 384
    p = net.prototypes.vectors[0].detach().double()  # (K, E)
    voxel_cos = _cosine(g.unsqueeze(0), p.unsqueeze(1))  # (K, V)
    top = voxel_cos.sort(dim=1, descending=True).values[:, :4]
    torch.testing.assert_close(out.similarities[0].double(), top.mean(dim=1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.attention[0][0].flatten(1).double(), voxel_cos, rtol=1e-5, atol=1e-6)
    # descriptor of prototype k: the embedding at its best-matching voxel
    torch.testing.assert_close(out.descriptors[0][0].double(), g[voxel_cos.argmax(dim=1)])


def test_protopnet_top_alpha_uses_at_least_one_voxel():
    net = build("protopnet", topk_fraction=0.5).eval()
    with torch.no_grad():
        out = net.explain(tiny_input(batch=1))  # s3 4x4x3: 48 voxels, α = 0.5 -> 24
    v = out.attention[0][0].flatten(1)
    torch.testing.assert_close(out.similarities[0], v.sort(dim=1, descending=True).values[:, :24].mean(dim=1))


@pytest.mark.parametrize("name", CLASS_SPECIFIC)
def test_class_specific_ownership_and_last_layer_init(name, cpu_small_models):
    """15 + 15 prototypes (LGG first), last layer +1 own class / -0.5 other, no bias (App. F, peers.md §1.3)."""
    net = cpu_small_models[name]
    own = torch.tensor([[1.0] * 15 + [0.0] * 15, [0.0] * 15 + [1.0] * 15])
    assert torch.equal(net.prototype_class_identity, own)
    assert "prototype_class_identity" in net.state_dict()
    assert net.classifier.bias is None
    assert torch.equal(net.classifier.weight.detach(), torch.where(own > 0, 1.0, -0.5))


@pytest.mark.parametrize("name", SHARED)
def test_shared_classifier_has_default_init_and_no_bias(name, cpu_small_models):
    net = cpu_small_models[name]
    assert not hasattr(net, "prototype_class_identity")
    assert net.classifier.bias is None
    w = net.classifier.weight.detach()
    assert w.shape == (2, 30)
    # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert w.abs().max() <= 1 / math.sqrt(30) and w.unique().numel() == 60


def test_prototypes_start_uniform_in_unit_interval(cpu_small_models):
    bank = cpu_small_models["um_protoshare_e2"].prototypes
    assert [tuple(v.shape) for v in bank.vectors] == [(9, 32), (15, 32), (6, 32)]
    flat = torch.cat([v.detach() for v in bank.vectors])
    assert flat.min() >= 0 and flat.max() < 1 and 0.4 < flat.mean() < 0.6


# ---------------------------------------------------------------- Online-CAM


@pytest.mark.parametrize("name", ONLINE_CAM)
def test_online_cam_logits_equal_hand_computation(name):
    """MProtoNet's Online-CAM (peers.md §2): LSE pooling (r = 10) of the mapping head's hidden features
    A = ReLU(BN(conv1(F))), times conv2's weights, times that scale's classifier columns."""
    net = build(name).eval()
    _randomise_batch_norm(net)
    with torch.no_grad():
        net.classifier.weight.normal_()
        out = net.explain(tiny_input())
    slices = net.scale_slices()
    assert len(out.online_cam_logits) == len(net.scales)
    for i, head in enumerate(net.mapping_heads):
        f = out.mapping_inputs[i].double()
        bn = head.bn1
        z = torch.einsum("oc,bchwd->bohwd", head.conv1.weight.detach().double().flatten(1), f)
        z = (z - bn.running_mean.double().view(1, -1, 1, 1, 1)) / torch.sqrt(bn.running_var.double() + bn.eps).view(
            1, -1, 1, 1, 1
        )
        a = torch.relu(
            z * bn.weight.detach().double().view(1, -1, 1, 1, 1) + bn.bias.detach().double().view(1, -1, 1, 1, 1)
        )
        pooled = torch.log(torch.exp(10.0 * a.flatten(2)).mean(dim=-1)) / 10.0  # (B, hidden)
        per_prototype = pooled @ head.conv2.weight.detach().double().flatten(1).t()  # (B, K_s)
        expected = per_prototype @ net.classifier.weight.detach().double()[:, slices[i]].t()
        torch.testing.assert_close(out.online_cam_logits[i].double(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ONLINE_CAM)
def test_online_cam_is_not_part_of_forward(name, cpu_small_models, monkeypatch):
    net = cpu_small_models[name]
    x = tiny_input()
    with torch.no_grad():
        out = net.explain(x)
        assert len(out.online_cam_logits) == len(net.scales)
        assert net.explain(x, online_cam=False).online_cam_logits == []

        def fail(*args, **kwargs):
            raise AssertionError("forward must not compute the Online-CAM logits")

        monkeypatch.setattr(net, "_online_cam_logits", fail)
        torch.testing.assert_close(net(x), out.logits)
    torch.testing.assert_close(out.logits, out.similarities @ net.classifier.weight.t())


@pytest.mark.parametrize("name", ["protopnet", "xprotonet"])
def test_models_without_online_cam_return_none(name, cpu_small_models):
    with torch.no_grad():
        assert cpu_small_models[name].explain(tiny_input()).online_cam_logits == []


# ---------------------------------------------------------------- training-stage gradients


@pytest.mark.parametrize("name", PROTOTYPE_MODELS)
def test_parameter_groups_partition_the_parameters(name, cpu_small_models):
    net = cpu_small_models[name]
    ids = [id(p) for group in net.parameter_groups().values() for p in group]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in net.parameters()}


def _stage_loss(net, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the logits, the Online-CAM logits and a mask term: every head a training loss reads."""
    out = net.explain(x)
    loss = F.cross_entropy(out.logits, y) + sum(m.mean() for m in out.masks)
    return loss + sum(F.cross_entropy(o, y) for o in out.online_cam_logits)


def _check_grads(groups: dict, trained: set[str]) -> None:
    for group, params in groups.items():
        for j, p in enumerate(params):
            if group in trained:
                assert p.grad is not None and p.grad.abs().sum() > 0, f"{group}[{j}] {tuple(p.shape)} got no gradient"
            else:
                assert p.grad is None, f"frozen {group}[{j}] {tuple(p.shape)} got a gradient"


@pytest.mark.parametrize("stage", ["stage1", "stage3"])
@pytest.mark.parametrize("name", PROTOTYPE_MODELS)
def test_gradients_reach_exactly_the_trained_parameter_groups(name, stage):
    """Stage 1 (App. D.5) trains encoder, add-ons, mapping modules and prototypes, with decoder/fusion frozen and
    the classifier outside the optimiser; stage 3 trains only the classifier."""
    net = build(name).train()
    if name == "maprotonet":
        # MAProtoNet starts its plain spatial gates with BN γ = 0, which makes their 7³ conv's gradient exactly 0
        for m in net.modules():
            if type(m).__name__ == "QuadrupletAttention":
                torch.nn.init.ones_(m.spatial_gate.bn.weight)
    trained = {"encoder", "add_ons", "mapping", "prototypes"} if stage == "stage1" else {"classifier"}
    groups = net.parameter_groups()
    for group, params in groups.items():
        for p in params:
            p.requires_grad_(group in trained)
    _stage_loss(net, tiny_input(), torch.tensor([0, 1])).backward()
    _check_grads(groups, trained)


# ---------------------------------------------------------------- state dict


def test_state_dict_round_trip_keeps_weights_statistics_and_provenance(tmp_path):
    a = build("um_protoshare_e2", seed=0)
    with torch.no_grad():
        a.train()(tiny_input())  # moves the BN running statistics away from their initial values
    bank = a.prototypes
    bank.set_source_ids(torch.tensor([0, 29]), ["BraTS20_Training_001", "sujet-é"])
    bank.source_box[0] = torch.tensor([1, 2, 3, 9, 10, 11])
    bank.source_similarity[29] = 0.75
    bank.push_epoch[:] = 10
    torch.save(a.state_dict(), tmp_path / "model.pt")

    b = build("um_protoshare_e2", seed=1)
    assert not torch.equal(b.prototypes.vectors[0], a.prototypes.vectors[0])
    b.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    for (key, va), (key_b, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert key == key_b and torch.equal(va, vb), key
    assert b.prototypes.provenance() == a.prototypes.provenance()
    assert b.prototypes.source_ids()[:2] == ["BraTS20_Training_001", ""]
    assert b.prototypes.source_ids()[29] == "sujet-é"
    x = tiny_input(seed=3)
    with torch.no_grad():
        torch.testing.assert_close(b.eval()(x), a.eval()(x), rtol=0, atol=0)


def test_class_specific_state_dict_round_trip_keeps_the_ownership_buffer(tmp_path):
    a = build("mprotonet", seed=0)
    torch.save(a.state_dict(), tmp_path / "model.pt")
    b = build("mprotonet", seed=1)
    b.prototype_class_identity.zero_()
    b.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    assert torch.equal(b.prototype_class_identity, a.prototype_class_identity)
    assert b.prototype_class_identity.sum() == 30


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("um_protoshare_e1", "um_protoshare_e2"),  # allocation (15, 9, 6) vs (9, 15, 6)
        ("um_protoshare_d", "um_protoshare_b"),  # decoder and gates vs none
        ("um_protoshare_c", "um_protoshare_d"),  # concat projection vs gates
        ("um_protoshare_a1", "um_protoshare_a2"),  # ownership buffer vs none
        ("um_protoshare_a2", "um_protoshare_a1"),
        ("um_protoshare_a2", "um_protoshare_b"),  # one scale vs three
        ("protopnet", "xprotonet"),  # no mapping module
        ("mprotonet", "maprotonet"),  # encoder depth, attention
        ("cnn", "um_protoshare_e2"),
    ],
)
def test_loading_another_models_state_dict_raises(source, target):
    with pytest.raises(RuntimeError, match="Error\\(s\\) in loading state_dict"):
        build(target).load_state_dict(build(source).state_dict())


# ---------------------------------------------------------------- TorchScript


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("name", DISTINCT_MODELS)
def test_traced_forward_equals_eager(name, cpu_small_models):
    net = cpu_small_models[name]
    with torch.no_grad():
        traced = torch.jit.trace(net, tiny_input(seed=0), check_trace=False)
        x = tiny_input(seed=5)
        assert isinstance(traced(x), torch.Tensor)
        torch.testing.assert_close(traced(x), net(x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- input and configuration errors


@pytest.mark.parametrize("name", ["um_protoshare_e2", "maprotonet", "cnn"])
def test_wrong_channel_count_is_a_value_error(name, cpu_small_models):
    net = cpu_small_models[name]
    with pytest.raises(ValueError, match=r"input must have shape \(B, 4, H, W, D\).*got \(1, 3, 32, 32, 24\)"):
        net(torch.zeros(1, 3, 32, 32, 24))
    with pytest.raises(ValueError, match=r"input must have shape"):
        net(torch.zeros(4, 32, 32, 24))


@pytest.mark.parametrize(("name", "divisor"), [("um_protoshare_e2", 8), ("cnn", 8), ("maprotonet", 4)])
def test_indivisible_spatial_size_is_a_value_error(name, divisor, cpu_small_models):
    net = cpu_small_models[name]
    with pytest.raises(ValueError, match=rf"input spatial size \(32, 32, 26\) must be a multiple of {divisor}"):
        net(torch.zeros(1, 4, 32, 32, 26))


def test_maprotonet_accepts_multiples_of_four(cpu_small_models):
    with torch.no_grad():
        assert cpu_small_models["maprotonet"](torch.randn(1, 4, 36, 36, 28)).shape == (1, 2)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"prototypes_per_scale": (15, 15)}, "prototypes_per_scale must give one positive count per active scale"),
        ({"prototypes_per_scale": (10, 0, 20)}, "prototypes_per_scale"),
        ({"scales": (3, 2, 1)}, "scales must be increasing"),
        ({"scales": (1, 2, 4), "prototypes_per_scale": (10, 10, 10)}, r"scales .* within 1\.\.3"),
        ({"ownership": "class_specific", "prototypes_per_scale": (9, 15, 7)}, "split evenly"),
        ({"mapping_feature_fusion": True}, "mapping_feature_fusion"),
        ({"topk_fraction": 0.0}, "topk_fraction"),
        ({"mapping": "l2_soft"}, "l1_soft"),
        ({"ownership": "shard"}, "shared"),
        ({"fusion": "gate"}, "gated"),
        ({"encoder_layers": (1, 1, 1), "encoder_widths": (16, 32, 64)}, "encoder layers and widths"),
    ],
)
def test_bad_configuration_is_a_value_error(overrides, match):
    with pytest.raises(ValueError, match=match):
        build("um_protoshare_e2", **overrides)
