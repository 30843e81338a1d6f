"""Every Table-1 model by name (App. E, F; DESIGN §5): configuration, output shapes at both presets, errors."""

from __future__ import annotations

import pytest
import torch
from network_cases import DISTINCT_MODELS, INPUT_SIZE, build, preset_overrides

from monai_protoshare.networks import MODEL_CONFIGURATIONS, CNNClassifier, PrototypeNetwork, build_network, model_names
from monai_protoshare.networks.encoder import AttentiveBottleneck

# App. E / F and DESIGN §5, written out independently of the factory's table:
# (scales, prototypes per scale, ownership, mapping, decoder fusion, Online-CAM)
EXPECTED = {
    "protopnet": ((3,), (30,), "class_specific", "none", "none", False),
    "xprotonet": ((3,), (30,), "class_specific", "plain", "none", False),
    "mprotonet": ((3,), (30,), "class_specific", "minmax_soft", "none", True),
    "maprotonet": ((2,), (30,), "class_specific", "minmax_soft", "none", True),
    "um_protoshare_a1": ((3,), (30,), "class_specific", "l1_soft", "none", True),
    "um_protoshare_a2": ((3,), (30,), "shared", "l1_soft", "none", True),
    "um_protoshare_b": ((1, 2, 3), (10, 10, 10), "shared", "l1_soft", "none", True),
    "um_protoshare_c": ((1, 2, 3), (10, 10, 10), "shared", "l1_soft", "concat", True),
    "um_protoshare_d": ((1, 2, 3), (10, 10, 10), "shared", "l1_soft", "gated", True),
    "um_protoshare_e1": ((1, 2, 3), (15, 9, 6), "shared", "l1_soft", "gated", True),
    "um_protoshare_e2": ((1, 2, 3), (9, 15, 6), "shared", "l1_soft", "gated", True),
    "um_protoshare_e3": ((1, 2, 3), (6, 9, 15), "shared", "l1_soft", "gated", True),
    "fpn_iaia_bl": ((1, 2, 3), (10, 10, 10), "class_specific", "none", "none", False),  # 5 per (level, class)
    "um_protoshare": ((1, 2, 3), (9, 15, 6), "shared", "l1_soft", "gated", True),
}
# encoder channels C_s and embedding E of each preset (DESIGN §4); strides of s1, s2, s3
CHANNELS = {"paper": {1: 64, 2: 256, 3: 512}, "cpu_small": {1: 16, 2: 64, 3: 128}}
EMBEDDING = {"paper": 128, "cpu_small": 32}
STRIDE = {1: 2, 2: 4, 3: 8}


def test_model_names_are_cnn_and_every_prototype_model():
    assert model_names() == sorted(["cnn", *EXPECTED])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_configuration_matches_appendix_e_and_f(name, cpu_small_models):
    scales, per_scale, ownership, mapping, fusion, online_cam = EXPECTED[name]
    net = cpu_small_models[name]
    assert isinstance(net, PrototypeNetwork)
    assert net.scales == scales and net.prototypes_per_scale == per_scale and net.prototypes.num_prototypes == 30
    assert (net.ownership, net.mapping, net.backbone.fusion, net.online_cam) == (ownership, mapping, fusion, online_cam)
    is_ma = name == "maprotonet"
    assert (net.feature_fusions is not None) == is_ma
    assert any(isinstance(m, AttentiveBottleneck) for m in net.modules()) == is_ma
    assert (net.backbone.decoder is not None) == (fusion != "none")


def test_cnn_is_the_gated_encoder_decoder_with_three_scales(cpu_small_models):
    net = cpu_small_models["cnn"]
    assert isinstance(net, CNNClassifier)
    assert net.scales == (1, 2, 3) and net.backbone.fusion == "gated" and net.backbone.decoder is not None


def test_default_name_and_alias_are_e2():
    assert MODEL_CONFIGURATIONS["um_protoshare"] == MODEL_CONFIGURATIONS["um_protoshare_e2"]
    assert build_network("UM-ProtoShare-E2", **preset_overrides("um_protoshare", "cpu_small")).prototypes_per_scale == (
        9,
        15,
        6,
    )


def test_parameter_counts_match_the_peers_at_paper_size():
    """peers.md §3 and §10: encoder 5,224,064, MProtoNet 5,380,088, MAProtoNet 640,056 parameters."""
    with torch.device("meta"):
        counts = {n: sum(p.numel() for p in build(n, "paper").parameters()) for n in ("mprotonet", "maprotonet")}
        encoder = sum(p.numel() for p in build("mprotonet", "paper").parameter_groups()["encoder"])
    assert (encoder, counts["mprotonet"], counts["maprotonet"]) == (5_224_064, 5_380_088, 640_056)


# ---------------------------------------------------------------- output shapes


def _expected_encoder_shapes(name: str, preset: str, batch: int) -> list[tuple[int, ...]]:
    size = INPUT_SIZE[preset]
    scales = (1, 2) if name == "maprotonet" else (1, 2, 3)
    return [(batch, CHANNELS[preset][s], *(n // STRIDE[s] for n in size)) for s in scales]


def _run_and_check_shapes(name: str, preset: str, batch: int) -> None:
    """Build ``name`` at ``preset`` size (on the current default device), run one no-grad forward, check every shape."""
    net = build(name, preset).eval()
    x = torch.randn(batch, 4, *INPUT_SIZE[preset])
    captured = {}
    net.backbone.encoder.register_forward_hook(lambda module, args, output: captured.update(encoder=output))
    E, C = EMBEDDING[preset], CHANNELS[preset]
    with torch.no_grad():
        if name == "cnn":
            features = net.features(x)
            logits = net.head(features)
            assert [tuple(g.shape) for g in features] == [
                (batch, E, *(n // STRIDE[s] for n in INPUT_SIZE[preset])) for s in (1, 2, 3)
            ]
        else:
            out = net.explain(x)
            logits = out.logits
    assert [tuple(f.shape) for f in captured["encoder"]] == _expected_encoder_shapes(name, preset, batch)
    assert tuple(logits.shape) == (batch, 2)
    if name == "cnn":
        return
    scales, per_scale, _, mapping, _, online_cam = EXPECTED[name]
    spatial = [tuple(n // STRIDE[s] for n in INPUT_SIZE[preset]) for s in scales]
    assert tuple(out.similarities.shape) == (batch, 30)
    assert [tuple(a.shape) for a in out.attention] == [
        (batch, k, *sp) for k, sp in zip(per_scale, spatial, strict=True)
    ]
    assert [tuple(d.shape) for d in out.descriptors] == [(batch, k, E) for k in per_scale]
    assert [tuple(g.shape) for g in out.features] == [(batch, E, *sp) for sp in spatial]
    if mapping == "none":
        assert out.masks == [] and out.mapping_inputs == []
    else:
        assert [tuple(m.shape) for m in out.masks] == [tuple(a.shape) for a in out.attention]
        # MAProtoNet's mapping module reads concat[avg-pooled s1, max-pooled s1, s2]
        mapping_channels = [2 * C[1] + C[2]] if name == "maprotonet" else [C[s] for s in scales]
        assert [tuple(m.shape) for m in out.mapping_inputs] == [
            (batch, c, *sp) for c, sp in zip(mapping_channels, spatial, strict=True)
        ]
    assert [tuple(o.shape) for o in out.online_cam_logits] == ([(batch, 2)] * len(scales) if online_cam else [])


@pytest.mark.parametrize("name", DISTINCT_MODELS)
def test_output_shapes_cpu_small(name):
    _run_and_check_shapes(name, "cpu_small", batch=2)


@pytest.mark.parametrize("name", DISTINCT_MODELS)
def test_output_shapes_paper_size_on_meta_device(name):
    """Paper size (4x128x128x96) with shapes only: the meta device runs the graph without arithmetic."""
    with torch.device("meta"):
        _run_and_check_shapes(name, "paper", batch=1)


@pytest.mark.slow
@pytest.mark.parametrize("name", DISTINCT_MODELS)
def test_output_shapes_paper_size_forward(name):
    """The same at paper size with a real no-grad forward (several seconds per model on 2 cores)."""
    _run_and_check_shapes(name, "paper", batch=1)


# ---------------------------------------------------------------- errors


def test_unknown_name_names_the_argument_and_the_closest_name():
    with pytest.raises(ValueError, match="name") as err:
        build_network("um_protoshar")
    assert "'um_protoshare'" in str(err.value)
    with pytest.raises(ValueError, match="mprotonet"):
        build_network("mprotonett")


def test_unknown_override_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="prototype_per_scale"):
        build_network("um_protoshare", prototype_per_scale=(10, 10, 10))
    with pytest.raises(ValueError, match="mapping"):
        build_network("cnn", mapping="plain")


def test_pretrained_needs_a_known_option_and_a_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torchvision cache: no ResNet-152 file anywhere
    with pytest.raises(FileNotFoundError, match="pretrained_path"):
        build_network("mprotonet", pretrained="imagenet", **preset_overrides("mprotonet", "cpu_small"))
    with pytest.raises(ValueError, match="imagenet"):
        build_network("mprotonet", pretrained="imagenett", pretrained_path="x.pth")


def test_weights_of_a_model_with_the_same_tensors_do_not_load_silently():
    import pytest
    import torch  # noqa: F401

    from monai_protoshare.networks import build_network

    kwargs = {"encoder_layers": (1, 1), "encoder_widths": (4, 8), "embedding_dim": 8}
    mprotonet, a1 = build_network("mprotonet", **kwargs), build_network("um_protoshare_a1", **kwargs)
    assert set(mprotonet.state_dict()) == set(a1.state_dict())  # same names and shapes ...
    with pytest.raises(RuntimeError, match="saved from another model"):  # ... still refused
        a1.load_state_dict(mprotonet.state_dict())
    build_network("um_protoshare_a1", **kwargs).load_state_dict(a1.state_dict())
