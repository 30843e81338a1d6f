"""Every bundle has the zoo files, valid metadata, the workflow properties, and configs that agree."""

import json

import pytest
import torch
import yaml
from monai.bundle import ConfigParser, verify_metadata

from monai_protoshare.networks import CNNClassifier, PrototypeNetwork, build_network
from monai_protoshare.workflows.demo import bundle_workflow
from tests.bundles.conftest import BUNDLES, BUNDLES_DIR, tiny_overrides

REQUIRED = [
    "LICENSE",
    "docs/README.md",
    "configs/metadata.json",
    "configs/train.yaml",
    "configs/evaluate.yaml",
    "configs/inference.yaml",
    "configs/multi_gpu_train.yaml",
    "configs/logging.conf",
    "configs/presets/paper.yaml",
    "configs/presets/cpu_small.yaml",
]
SCHEMA = BUNDLES_DIR / "schema" / "meta_schema.json"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_has_the_zoo_layout(bundle):
    missing = [f for f in REQUIRED if not (BUNDLES_DIR / bundle / f).is_file()]
    assert not missing


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_declares_image_and_pred(bundle):
    """(Validation against the schema: ``test_model_zoo.py``.)"""
    meta = json.loads((BUNDLES_DIR / bundle / "configs" / "metadata.json").read_text())
    image, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    assert image["num_channels"] == 4 and list(image["channel_def"].values()) == ["T1", "T1ce", "T2", "FLAIR"]
    assert pred["type"] == "probabilities" and pred["channel_def"] == {"0": "LGG", "1": "HGG"}


def test_metadata_schema_rejects_a_missing_field(tmp_path):
    meta = json.loads((BUNDLES_DIR / "um_protoshare" / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="network_data_format"):
        verify_metadata(meta_file=str(bad), filepath=str(SCHEMA))


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize("workflow_type,configs", [("train", ["train.yaml"]), ("infer", ["inference.yaml"])])
def test_check_properties_is_empty(bundle, workflow_type, configs, tmp_path, bundle_cohort):
    overrides = tiny_overrides(bundle)
    if workflow_type == "infer":  # inference loads trained weights at initialize
        sizes = {k: overrides[k] for k in ("encoder_layers", "encoder_widths", "embedding_dim")}
        torch.save(build_network(bundle, **sizes).state_dict(), tmp_path / "model.pt")
        overrides = {**sizes, "model_path": str(tmp_path / "model.pt")}
    workflow = bundle_workflow(
        BUNDLES_DIR / bundle,
        configs,
        workflow_type,
        output_dir=str(tmp_path),
        dataset_dir=str(bundle_cohort),
        **overrides,
    )
    assert workflow.check_properties() == []


def _network(bundle, *extra):
    parser = ConfigParser()
    root = BUNDLES_DIR / bundle / "configs"
    parser.read_config([str(root / "train.yaml")] + [str(root / e) for e in extra])
    parser["encoder_layers"] = [1] if bundle == "maprotonet" else [1, 1]
    parser["encoder_widths"] = [4] if bundle == "maprotonet" else [4, 8]
    parser["embedding_dim"] = 8
    parser["pretrained"] = None  # tiny widths: the paper preset's ImageNet start does not fit them
    return parser.get_parsed_content("network_def")


@pytest.mark.parametrize(
    "ablation,scales,per_scale,ownership,fusion",
    [
        ("A1", (3,), (30,), "class_specific", "none"),
        ("A2", (3,), (30,), "shared", "none"),
        ("B", (1, 2, 3), (10, 10, 10), "shared", "none"),
        ("C", (1, 2, 3), (10, 10, 10), "shared", "concat"),
        ("D", (1, 2, 3), (10, 10, 10), "shared", "gated"),
        ("E1", (1, 2, 3), (15, 9, 6), "shared", "gated"),
        ("E3", (1, 2, 3), (6, 9, 15), "shared", "gated"),
    ],
)
def test_ablation_overrides_build_the_intended_network(ablation, scales, per_scale, ownership, fusion):
    net = _network("um_protoshare", f"ablations/{ablation}.yaml")
    assert isinstance(net, PrototypeNetwork)
    assert (net.scales, net.prototypes_per_scale, net.ownership, net.backbone.fusion, net.mapping) == (
        scales,
        per_scale,
        ownership,
        fusion,
        "l1_soft",
    )


def test_default_bundle_is_e2_and_baselines_are_their_models():
    e2 = _network("um_protoshare")
    assert e2.prototypes_per_scale == (9, 15, 6) and e2.backbone.fusion == "gated"
    assert isinstance(_network("cnn"), CNNClassifier)
    assert _network("protopnet").mapping == "none"
    assert _network("xprotonet").mapping == "plain"
    assert _network("mprotonet").mapping == "minmax_soft" and _network("mprotonet").online_cam
    maprotonet = _network("maprotonet")
    assert maprotonet.feature_fusions is not None and maprotonet.scales == (2,)


@pytest.mark.parametrize("preset", ["paper", "cpu_small"])
def test_preset_mask_prior_initialises_the_mapping_modules(preset):
    prior = yaml.safe_load((BUNDLES_DIR / "um_protoshare" / "configs" / "presets" / f"{preset}.yaml").read_text())
    prior = prior.get("mask_prior", 0.5)
    net = _network("um_protoshare", f"presets/{preset}.yaml")
    shift = torch.special.ndtri(torch.tensor(prior)).item()
    for head in net.mapping_heads:
        torch.testing.assert_close(head.bn2.bias.detach(), torch.full_like(head.bn2.bias, shift))
    if preset == "cpu_small":
        assert prior < 0.5  # the short schedule cannot move the BN shift far (module docstring, README)


@pytest.mark.parametrize("preset,factor,lambda_map", [("paper", 1.0, 0.5), ("cpu_small", 30.0, 5.0)])
def test_preset_sets_the_map_shift_learning_rate_and_mapping_weight(
    preset, factor, lambda_map, tmp_path, bundle_cohort
):
    overrides = {k: v for k, v in tiny_overrides("um_protoshare").items() if k in ("encoder_widths", "embedding_dim")}
    overrides["pretrained"] = None  # tiny widths: the paper preset's ImageNet start does not fit them
    workflow = bundle_workflow(
        BUNDLES_DIR / "um_protoshare",
        ["train.yaml", f"presets/{preset}.yaml"],
        "train",
        output_dir=str(tmp_path),
        dataset_dir=str(bundle_cohort),
        **overrides,
    )
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.latent_loss.weights["map"] == lambda_map
    shifts = {id(p) for p in trainer.network.mask_shift_parameters()}
    lrs = [g["lr"] for g in trainer.latent_optimizer.param_groups if {id(p) for p in g["params"]} & shifts]
    assert lrs == [pytest.approx(factor * trainer.latent_optimizer.param_groups[0]["lr"])]


def _keys(config, prefix=""):
    """Flattened ``id -> value`` of a config's structure (for drift checks between bundles)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_keys(value, f"{prefix}{key}#"))
        else:
            out[f"{prefix}{key}"] = value
    return out


MODEL_SPECIFIC = {
    "model_name",
    "encoder_layers",
    "encoder_widths",
    "latent_epochs",
    "train#trainer#push_data_loader",
    "validate#attribution_method",
    "handlers",
    "top_k",
    "mask_prior",  # UM-ProtoShare's eq.-12 mapping module only; the baselines keep torch's BN initialisation
    "network_def#mask_prior",
    "mask_shift_lr_factor",  # likewise (cpu_small: the maps' BN shift learns faster)
    "train#trainer#mask_shift_lr_factor",
    "class_map",  # the prototype models' class-map conventions (the CNN's map is Grad-CAM or occlusion)
    "protopnet_map",
    "validate#evaluator#class_map",
    "validate#evaluator#protopnet_map",
}  # fmt: skip  (the CNN exports no prototype evidence)


@pytest.mark.parametrize("bundle", [b for b in BUNDLES if b != "um_protoshare"])
@pytest.mark.parametrize("config", ["train.yaml", "evaluate.yaml", "inference.yaml", "multi_gpu_train.yaml"])
def test_bundle_configs_do_not_drift_from_um_protoshare(bundle, config):
    reference = _keys(yaml.safe_load((BUNDLES_DIR / "um_protoshare" / "configs" / config).read_text()))
    other = _keys(yaml.safe_load((BUNDLES_DIR / bundle / "configs" / config).read_text()))
    differing = {k for k in set(reference) | set(other) if reference.get(k) != other.get(k)}
    assert differing <= MODEL_SPECIFIC, sorted(differing - MODEL_SPECIFIC)
