"""The MONAI model-zoo's checks that run offline, on every bundle folder (new bundles are covered as they appear).

The zoo's CI (``ci/verify_bundle.py``) downloads the meta-schema named by ``metadata.json``'s ``schema``; here the
metadata is validated against the repository's offline copy of it instead. Exports are checked in
``test_bundle_export.py``; workflow properties in ``test_bundle_files.py``.
"""

import csv
import json
import shutil

import pytest
import torch
import yaml
from monai.bundle import verify_metadata
from monai.handlers import CheckpointLoader

from monai_protoshare.networks import build_network
from monai_protoshare.workflows.demo import bundle_workflow
from monai_protoshare.workflows.options import BundleOptionError
from tests.bundles.conftest import BUNDLES_DIR, tiny_overrides
from tests.bundles.test_fpn_iaia_bl_bundle import SCHEDULE as FPN_SCHEDULE
from tests.bundles.test_seg_bundles import MODEL as TINY_SEG_MODELS
from tests.bundles.test_seg_bundles import TINY_SEG

#: network-size ids a tiny training run overrides that inference needs as well
NETWORK_IDS = ("encoder_layers", "encoder_widths", "embedding_dim")
SEG_NETWORK_IDS = ("num_prototypes", "init_filters", "blocks_down", "blocks_up")

SCHEMA_COPY = BUNDLES_DIR / "schema" / "meta_schema.json"
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
ALL_BUNDLES = sorted(p.parent.parent.name for p in BUNDLES_DIR.glob("*/configs/metadata.json"))
#: the sections of a model-zoo README, in this order (the zoo's bundle README template)
README_SECTIONS = [
    "Model Overview",
    "Data",
    "Training configuration",
    "Input",
    "Output",
    "Performance",
    "MONAI Bundle Commands",
    "References",
    "License",
]


def _metadata(bundle):
    return json.loads((BUNDLES_DIR / bundle / "configs" / "metadata.json").read_text())


def test_every_bundle_folder_is_checked():
    assert {"um_protoshare", "protopnet", "xprotonet", "mprotonet", "maprotonet", "cnn"} <= set(ALL_BUNDLES)


@pytest.mark.parametrize("bundle", ALL_BUNDLES)
def test_metadata_names_the_official_schema_and_validates_against_the_offline_copy(bundle):
    meta_file = BUNDLES_DIR / bundle / "configs" / "metadata.json"
    assert _metadata(bundle)["schema"] == SCHEMA_URL
    verify_metadata(meta_file=str(meta_file), filepath=str(SCHEMA_COPY))  # raises on an invalid file


@pytest.mark.parametrize("bundle", ALL_BUNDLES)
def test_metadata_has_the_zoo_fields_and_its_pre_commit_format(bundle):
    """``version`` in ``changelog`` (verify_bundle), class descriptions and ``eval_metrics``, and the exact text
    the zoo's ``pretty-format-json --autofix --no-sort-keys --indent=4`` hook would write."""
    text = (BUNDLES_DIR / bundle / "configs" / "metadata.json").read_text()
    meta = json.loads(text)
    assert meta["version"] in meta["changelog"]
    for key in ("image_classes", "pred_classes"):
        assert isinstance(meta[key], str) and meta[key]
    assert meta["eval_metrics"] and all(isinstance(v, (int, float)) for v in meta["eval_metrics"].values())
    assert text == json.dumps(meta, indent=4) + "\n"


@pytest.mark.parametrize("bundle", ALL_BUNDLES)
def test_bundle_has_license_data_license_and_large_files_list(bundle):
    root = BUNDLES_DIR / bundle
    assert (root / "LICENSE").is_file()
    assert "BraTS" in (root / "docs" / "data_license.txt").read_text()
    large_files = yaml.safe_load((root / "large_files.yml").read_text())["large_files"]
    assert [entry["path"] for entry in large_files] == ["models/model.pt"]
    assert all({"path", "url", "hash_val", "hash_type"} <= set(entry) for entry in large_files)


@pytest.mark.parametrize("bundle", ALL_BUNDLES)
def test_readme_has_the_zoo_sections_in_order_and_the_torchscript_statement(bundle):
    text = (BUNDLES_DIR / bundle / "docs" / "README.md").read_text()
    headings = [line[3:].strip() for line in text.splitlines() if line.startswith("## ")]
    found = [next((h for h in headings if h.startswith(section)), None) for section in README_SECTIONS]
    assert None not in found, [s for s, h in zip(README_SECTIONS, found) if h is None]
    assert [headings.index(h) for h in found] == sorted(headings.index(h) for h in found)
    assert "TorchScript" in text and "ckpt_export" in text


@pytest.mark.parametrize("bundle", ALL_BUNDLES)
def test_training_writes_and_inference_reads_bundle_root_models_model_pt(bundle):
    configs = BUNDLES_DIR / bundle / "configs"
    default = "$os.path.join(@bundle_root, 'models', 'model.pt')"
    inference = yaml.safe_load((configs / "inference.yaml").read_text())
    assert yaml.safe_load((configs / "train.yaml").read_text())["model_path"] == inference["model_path"] == default
    loader = inference["handlers"][0]
    assert loader["_target_"] == "CheckpointLoader" and loader["load_path"] == "@model_path"


def _tiny_training(bundle: str) -> tuple[dict, tuple[str, ...]]:
    """Tiny training overrides of ``bundle`` (model_path left at its default) and the ids inference needs too."""
    if bundle in TINY_SEG_MODELS:
        overrides = {**TINY_SEG, **TINY_SEG_MODELS[bundle], "epochs": 1}
        if bundle == "proto_seg":
            overrides.update(last_layer_epochs=1)
    else:
        overrides = tiny_overrides(bundle)
        if bundle == "fpn_iaia_bl":
            overrides.update(FPN_SCHEDULE)
    overrides.pop("model_path")
    shared = ("spatial_size", "pixdim", *(k for k in SEG_NETWORK_IDS + NETWORK_IDS if k in overrides))
    return overrides, shared


@pytest.mark.parametrize("bundle", ALL_BUNDLES)
def test_trained_weights_round_trip_through_models_model_pt(bundle, bundle_cohort, tmp_path):
    """On a copy of the bundle, as the zoo holds it: a default training run writes ``<bundle_root>/models/model.pt``
    (the fold's final weights), and inference given no path loads that file through MONAI's ``CheckpointLoader``;
    without it, inference stops before any work, naming the file."""
    root = tmp_path / bundle
    shutil.copytree(BUNDLES_DIR / bundle, root, ignore=shutil.ignore_patterns("models", "outputs"))
    overrides, shared = _tiny_training(bundle)
    train = bundle_workflow(root, ["train.yaml"], dataset_dir=str(bundle_cohort), fold=0, **overrides)
    train.run()
    train.finalize()
    model = root / "models" / "model.pt"
    saved = torch.load(model, weights_only=True)
    fold_model = torch.load(root / "outputs" / "fold0" / "checkpoints" / "model.pt", weights_only=True)
    assert saved.keys() == fold_model.keys() and all(torch.equal(saved[k], fold_model[k]) for k in saved)

    cases = tmp_path / "cases"
    for case in sorted(p for p in bundle_cohort.iterdir() if p.is_dir())[:1]:
        shutil.copytree(case, cases / case.name)
    infer_overrides = {k: overrides[k] for k in shared}
    infer = bundle_workflow(root, ["inference.yaml"], "infer", dataset_dir=str(cases), num_workers=0, **infer_overrides)
    loader = infer.parser.get_parsed_content("handlers")[0]
    assert isinstance(loader, CheckpointLoader) and loader.load_path == str(model)
    network = infer.parser.get_parsed_content("network")
    with torch.no_grad():  # what inference uses must come from the file, loaded when the evaluator starts
        for parameter in network.parameters():
            parameter.zero_()
    infer.run()
    # The parameters (zeroed above) are the file's again. Buffers are not compared: proto_seg's export handler, work in
    # progress elsewhere, still runs the network in train mode (its BatchNorm statistics move during inference).
    differing = [k for k, p in network.named_parameters() if not torch.equal(p.detach().cpu(), saved[k])]
    assert not differing, differing
    assert any(root.joinpath("outputs", "inference").iterdir())

    model.unlink()
    with pytest.raises(BundleOptionError, match=r"--model_path: weights file '.*models/model\.pt' not found"):
        bundle_workflow(root, ["inference.yaml"], "infer", dataset_dir=str(cases), **infer_overrides)


@pytest.mark.parametrize("bundle", [b for b in ("cnn", "fpn_iaia_bl") if b in ALL_BUNDLES])
def test_inference_evaluator_applies_the_bundle_postprocessing_once(bundle, bundle_cohort, tmp_path):
    """``predictions.csv`` holds softmax(network(image)) of each preprocessed case: the evaluator's
    ``postprocessing`` makes the probabilities and the writer takes them as they are."""
    sizes = {"encoder_layers": [1, 1], "encoder_widths": [4, 8], "embedding_dim": 8}
    torch.manual_seed(0)
    torch.save(build_network(bundle, **sizes).state_dict(), tmp_path / "model.pt")
    cases = tmp_path / "cases"
    for case in sorted(p for p in bundle_cohort.iterdir() if p.is_dir())[:2]:
        shutil.copytree(case, cases / case.name)
    workflow = bundle_workflow(
        BUNDLES_DIR / bundle,
        ["inference.yaml"],
        "infer",
        **sizes,
        spatial_size=[16, 16, 8],
        pixdim=12.0,
        num_workers=0,
        dataset_dir=str(cases),
        output_dir=str(tmp_path / "out"),
        model_path=str(tmp_path / "model.pt"),
    )
    workflow.run()
    rows = {r["subject_id"]: r for r in csv.DictReader(open(tmp_path / "out" / "predictions.csv"))}
    network = workflow.parser.get_parsed_content("network").eval()
    for item in workflow.parser.get_parsed_content("dataset"):
        with torch.no_grad():
            expected = torch.softmax(network(item["image"].as_tensor()[None]), dim=1)[0]
        got = [float(v) for k, v in rows[item["subject_id"]].items() if k.startswith("prob_")]
        torch.testing.assert_close(torch.tensor(got), expected, atol=2e-6, rtol=0)
