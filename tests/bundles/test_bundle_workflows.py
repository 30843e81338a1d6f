"""Each bundle's train -> evaluate -> inference chain, in process, on a tiny synthetic cohort."""

import csv
import json

import pytest
import torch

from monai_protoshare.workflows.demo import bundle_workflow
from monai_protoshare.workflows.options import BundleOptionError
from tests.bundles.conftest import BUNDLES, BUNDLES_DIR, tiny_overrides


def _run(bundle, configs, workflow_type="train", **overrides):
    workflow = bundle_workflow(BUNDLES_DIR / bundle, configs, workflow_type, **overrides)
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()
    return workflow


@pytest.mark.parametrize("bundle", BUNDLES)
def test_train_evaluate_infer_chain(bundle, bundle_cohort, tmp_path):
    overrides = {**tiny_overrides(bundle), "dataset_dir": str(bundle_cohort), "output_dir": str(tmp_path), "fold": 1}
    _run(bundle, ["train.yaml"], **overrides)
    fold_dir = tmp_path / "fold1"
    model = torch.load(fold_dir / "checkpoints" / "model.pt", weights_only=True)
    assert (fold_dir / "run_info.json").is_file() and "model_name" in (fold_dir / "run_config.yaml").read_text()
    if bundle != "cnn":
        provenance = json.loads((fold_dir / "prototypes.json").read_text())["prototypes"]
        assert len(provenance) == 30 and all(p["source_subject_id"] for p in provenance)

    _run(bundle, ["train.yaml", "evaluate.yaml"], **overrides)
    metrics = json.loads((fold_dir / "metrics.json").read_text())
    assert metrics["n"] == 2 and {"bac", "ap", "ids", "ids_bac", "ids_peer", "ids_peer_bac", "ece"} <= set(metrics)
    if bundle != "cnn":  # AP under each class-map convention; the configured one is ``ap`` (DESIGN §8)
        assert metrics["class_map"] == "density"
        assert metrics["ap"] == pytest.approx(metrics["ap_by_class_map"]["density"])
    rows = list(csv.DictReader(open(fold_dir / "predictions.csv")))
    assert len(rows) == 2 and {r["label"] for r in rows} == {"LGG", "HGG"}

    models_dir = tmp_path / "bundle_models"
    models_dir.mkdir()
    torch.save(model, models_dir / "model.pt")
    infer = {
        k: v
        for k, v in overrides.items()
        if k in ("spatial_size", "pixdim", "encoder_layers", "encoder_widths", "embedding_dim")
    }
    out = tmp_path / "inference"
    _run(
        bundle,
        ["inference.yaml"],
        "infer",
        **infer,
        dataset_dir=str(bundle_cohort),
        output_dir=str(out),
        model_path=str(models_dir / "model.pt"),
        num_workers=0,
        top_k=2,
    )
    predictions = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(predictions) == 10
    if bundle != "cnn":
        reports = sorted((out / "evidence").glob("*/report.json"))
        assert len(reports) == 10


def test_ablation_runs_into_its_own_folder(bundle_cohort, tmp_path):
    overrides = {
        **tiny_overrides("um_protoshare"),
        "dataset_dir": str(bundle_cohort),
        "fold": 0,
        "bundle_root": str(tmp_path),
    }
    workflow = bundle_workflow(BUNDLES_DIR / "um_protoshare", ["train.yaml", "ablations/A1.yaml"], **overrides)
    assert workflow.parser.get_parsed_content("fold_dir").endswith("outputs/A1/fold0")
    assert workflow.parser.get_parsed_content("network_def").ownership == "class_specific"


@pytest.mark.parametrize(
    "overrides,option,match",
    [
        ({"dataset_dir": "/no/such/folder"}, "--dataset_dir", "does not exist"),
        ({"fold": 7}, "--fold", "must be an integer in 0..4"),
    ],
)
def test_bad_options_are_one_line_errors(bundle_cohort, tmp_path, overrides, option, match):
    values = {
        **tiny_overrides("um_protoshare"),
        "dataset_dir": str(bundle_cohort),
        "output_dir": str(tmp_path),
        **overrides,
    }
    with pytest.raises(BundleOptionError, match=match) as err:
        _run("um_protoshare", ["train.yaml"], **values)
    assert err.value.option == option and "\n" not in str(err.value) and err.value.code == 2


def test_empty_dataset_dir_is_named(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BundleOptionError, match="is empty"):
        _run(
            "um_protoshare",
            ["train.yaml"],
            **tiny_overrides("um_protoshare"),
            dataset_dir=str(empty),
            output_dir=str(tmp_path),
        )


def test_checkpoint_of_another_model_is_refused(bundle_cohort, tmp_path):
    other = tmp_path / "mprotonet.pt"
    from monai_protoshare.networks import build_network

    torch.save(
        build_network("mprotonet", encoder_layers=(1, 1), encoder_widths=(4, 8), embedding_dim=8).state_dict(), other
    )
    values = {
        **tiny_overrides("um_protoshare"),
        "dataset_dir": str(bundle_cohort),
        "output_dir": str(tmp_path),
        "ckpt_path": str(other),
    }
    with pytest.raises(BundleOptionError, match="another model") as err:
        _run("um_protoshare", ["train.yaml", "evaluate.yaml"], **values)
    assert err.value.option == "--ckpt_path"
