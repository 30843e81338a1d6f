"""The segmentation bundles (issue 23): a tiny proto_seg learns the synthetic tumours through its bundle; the
SegResNet baseline; inference export; the pruning curve of the last layer (seed 004)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks.nets import SegResNet

from monai_protoshare.io import write_json
from monai_protoshare.networks import build_network
from monai_protoshare.workflows.demo import bundle_workflow
from monai_protoshare.workflows.seg_prune import (
    cache_head_inputs,
    channel_contributions,
    head_logits,
    pruning_curve,
    refit_head,
)
from monai_protoshare.workflows.seg_table import write_seg_table
from tests.bundles.conftest import BUNDLES_DIR

#: 32x32x24 voxels of 6 mm, one residual stage (output stride 4), no augmentation: seconds on one thread
TINY_SEG = {
    "spatial_size": [32, 32, 24],
    "pixdim": 6.0,
    "encoder_layers": [1],
    "encoder_widths": [8],
    "batch_size": 4,
    "lr": 0.01,
    "augment": False,
    "num_workers": 0,
    "validate#dataloader#num_workers": 0,
    "model_path": None,  # no <bundle_root>/models/model.pt written into the repository's bundle folder
}
MODEL = {
    "proto_seg": {"embedding_dim": 16, "num_prototypes": 8, "epochs": 20},
    "segresnet": {"init_filters": 8, "blocks_down": [1, 1, 1], "blocks_up": [1, 1], "epochs": 3},
}


def _run(bundle: str, configs: list[str], **overrides):
    workflow = bundle_workflow(BUNDLES_DIR / bundle, configs, **overrides)
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()
    return workflow


def test_tiny_proto_seg_learns_the_synthetic_tumours(bundle_cohort, tmp_path):
    overrides = {**TINY_SEG, **MODEL["proto_seg"], "dataset_dir": str(bundle_cohort), "output_dir": str(tmp_path)}
    _run("proto_seg", ["train.yaml"], **overrides)
    fold_dir = tmp_path / "fold0"
    state = torch.load(fold_dir / "checkpoints" / "model.pt", weights_only=True)
    provenance = json.loads((fold_dir / "prototypes.json").read_text())["prototypes"]
    assert len(provenance) == 8 and all(p["subject_id"].startswith("BraTS20_Training_") for p in provenance)
    assert (state["last_layer_weight"].shape, state["prototypes"].shape) == ((3, 8), (8, 16))

    explain = {"validate#explainers": {"prototypes": "$monai_protoshare.workflows.seg_evaluate.prototype_evidence"}}
    _run("proto_seg", ["train.yaml", "evaluate.yaml"], **overrides, **explain, **{"validate#deletion_steps": 10})
    metrics = json.loads((fold_dir / "metrics.json").read_text())
    assert metrics["n"] == 2 and len(metrics["cases"]) == 2 and metrics["model"] == "proto_seg"
    # an empty prediction scores Dice 0 on every held-out case (each has a tumour): the model must do far better
    assert metrics["dice_WT"] > 0.5, metrics
    assert 0 <= metrics["deletion_prototypes"] <= 100

    prune = {"prune_fractions": [0.0, 0.5], "prune_refit_epochs": 2, "prune#dataloader#num_workers": 0}
    _run("proto_seg", ["train.yaml", "prune.yaml"], **overrides, **prune)
    curve = json.loads((fold_dir / "pruning.json").read_text())["curve"]
    assert [point["kept"] for point in curve] == [8, 4] and all(0 <= point["dice_WT"] <= 1 for point in curve)


def test_segresnet_bundle_trains_and_evaluates_with_seg_grad_cam(bundle_cohort, tmp_path):
    overrides = {**TINY_SEG, **MODEL["segresnet"], "dataset_dir": str(bundle_cohort), "output_dir": str(tmp_path)}
    _run("segresnet", ["train.yaml"], **overrides)
    fold_dir = tmp_path / "fold0"
    assert "conv_final.2.conv.weight" in torch.load(fold_dir / "checkpoints" / "model.pt", weights_only=True)
    grad_cam = "$functools.partial(monai_protoshare.explain.segmentation_xai.seg_grad_cam, layer='up_layers.1')"
    explain = {"validate#explainers": {"seg_grad_cam": grad_cam}, "validate#deletion_steps": 5}
    _run("segresnet", ["train.yaml", "evaluate.yaml"], **overrides, **explain)
    metrics = json.loads((fold_dir / "metrics.json").read_text())
    assert metrics["n"] == 2 and {"dice_TC", "dice_WT", "dice_ET", "hd95_WT", "deletion_seg_grad_cam"} <= set(metrics)

    keys = ("spatial_size", "pixdim", "init_filters", "blocks_down", "blocks_up")
    out = tmp_path / "inference"
    infer = {"dataset_dir": str(bundle_cohort), "output_dir": str(out), "num_workers": 0}
    ckpt = str(fold_dir / "checkpoints" / "model.pt")
    workflow = bundle_workflow(
        BUNDLES_DIR / "segresnet",
        ["inference.yaml"],
        "infer",
        **{k: overrides[k] for k in keys},
        **infer,
        model_path=ckpt,
    )
    workflow.run()
    written = sorted(out.glob("*/segmentation.nii.gz"))
    assert len(written) == 10 and not list(out.glob("*/report.json"))  # no prototype evidence for a CNN


def test_proto_seg_inference_writes_native_space_segmentation_and_evidence(bundle_cohort, tmp_path):
    overrides = {**TINY_SEG, **MODEL["proto_seg"], "epochs": 2, "dataset_dir": str(bundle_cohort)}
    _run("proto_seg", ["train.yaml"], **overrides, output_dir=str(tmp_path / "train"))
    fold_dir = tmp_path / "train" / "fold0"
    keys = ("spatial_size", "pixdim", "encoder_layers", "encoder_widths", "embedding_dim", "num_prototypes")
    out = tmp_path / "inference"
    workflow = bundle_workflow(
        BUNDLES_DIR / "proto_seg",
        ["inference.yaml"],
        "infer",
        **{k: overrides[k] for k in keys},
        dataset_dir=str(bundle_cohort),
        output_dir=str(out),
        model_path=str(fold_dir / "checkpoints" / "model.pt"),
        prototypes_json=str(fold_dir / "prototypes.json"),
        num_workers=0,
        top_k=2,
        explainers={
            "grad_cam": "$functools.partial(monai_protoshare.explain.segmentation_xai.seg_grad_cam, layer='aspp')"
        },
    )
    assert workflow.check_properties() == []
    workflow.run()
    cases = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(cases) == 10
    case_dir = out / cases[0]
    t1 = nib.load(bundle_cohort / cases[0] / f"{cases[0]}_t1.nii.gz")
    seg = nib.load(case_dir / "segmentation.nii.gz")
    assert seg.shape == t1.shape and np.allclose(seg.affine, t1.affine) and seg.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2, 4}
    assert nib.load(case_dir / "probabilities.nii.gz").shape == (*t1.shape, 3)
    grad_cam = nib.load(case_dir / "xai_grad_cam.nii.gz")
    assert grad_cam.shape == t1.shape and np.allclose(grad_cam.affine, t1.affine)
    report = json.loads((case_dir / "report.json").read_text())
    assert len(list(case_dir.glob("prototype_*.nii.gz"))) == 2 == len(report["top_prototypes_wt"])
    wt = report["regions"]["WT"]
    assert len(wt) == 8 and all("source" in p for p in wt)
    if report["voxels"]["WT"]:
        assert sum(p["share"] for p in wt) == pytest.approx(1.0)


# ------------------------------------------------------------------ pruning curve (workflows/seg_prune.py)


def _cases(n: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cases = []
    for _ in range(n):
        image = torch.randn(1, 4, 16, 16, 8, generator=g)
        seg = torch.zeros(1, 3, 16, 16, 8)
        seg[:, :, 4:10, 5:11, 2:6] = 1
        cases.append({"image": image, "seg": seg})
    return cases


def test_proto_seg_head_is_the_network_and_unused_prototypes_are_pruned_first():
    torch.manual_seed(0)
    net = build_network("proto_seg", encoder_layers=[1], encoder_widths=[4], embedding_dim=6, num_prototypes=4).eval()
    with torch.no_grad():
        net.last_layer_weight[:, 2] = -1.0  # prototype 2 contributes nothing to any region
    cases = _cases()
    features, targets, weight, bias, non_negative = cache_head_inputs(net, cases)
    assert non_negative and weight[:, 2].abs().sum() == 0
    with torch.no_grad():
        assert torch.allclose(head_logits(features[0], weight, bias, (16, 16, 8)), net(cases[0]["image"]), atol=1e-5)
    assert channel_contributions(features, weight).argmin() == 2
    curve = pruning_curve(net, cases, cases, fractions=(0.0, 0.25, 0.5), refit_epochs=0)
    assert [r["kept"] for r in curve] == [4, 3, 2] and curve[1]["removed"] == [2]
    # without re-fitting, removing a prototype whose weights are all 0 changes nothing
    assert {k: v for k, v in curve[1].items() if k.startswith("dice")} == pytest.approx(
        {k: v for k, v in curve[0].items() if k.startswith("dice")}
    )


def test_refit_keeps_removed_channels_at_zero_and_proto_seg_weights_non_negative():
    features = [torch.rand(2, 5, 4, 4, 2)]
    targets = [(torch.rand(2, 3, 8, 8, 4) > 0.5).float()]
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    w, b = refit_head(features, targets, torch.randn(3, 5), torch.zeros(3), keep, non_negative=True, epochs=5, lr=0.5)
    assert (w[:, [1, 4]] == 0).all() and (w >= 0).all()
    w, _ = refit_head(features, targets, torch.randn(3, 5), torch.zeros(3), keep, non_negative=False, epochs=5)
    assert (w[:, [1, 4]] == 0).all()


def test_segresnet_head_reproduces_its_logits_and_the_curve_runs(tmp_path):
    torch.manual_seed(0)
    net = SegResNet(in_channels=4, out_channels=3, init_filters=8, blocks_down=(1, 1), blocks_up=(1,)).eval()
    cases = _cases()
    features, _, weight, bias, non_negative = cache_head_inputs(net, cases)
    assert not non_negative and weight.shape == (3, 8)
    with torch.no_grad():
        assert torch.allclose(head_logits(features[0], weight, bias, (16, 16, 8)), net(cases[0]["image"]), atol=1e-5)
    curve = pruning_curve(net, cases, cases, output_dir=tmp_path, fractions=(0.0, 0.5), refit_epochs=2)
    assert [r["kept"] for r in curve] == [8, 4] and (tmp_path / "pruning.json").is_file()
    with pytest.raises(ValueError, match="1x1x1 Conv3d"):
        cache_head_inputs(net, cases, head_layer="convInit")


# ------------------------------------------------------------------ segmentation table (workflows/seg_table.py)
def test_seg_table_reports_mean_and_sd_over_folds(tmp_path):
    folds = {
        "proto_seg": [(0.6, 10.0, 20.0), (0.8, float("nan"), 30.0)],
        "segresnet": [(0.5, 4.0, 50.0), (0.7, 6.0, 60.0)],
    }
    for run, values in folds.items():
        for k, (dice, hd95, area) in enumerate(values):
            metrics = {f"dice_{r}": dice for r in ("TC", "WT", "ET")}
            metrics.update({f"hd95_{r}": hd95 for r in ("TC", "WT", "ET")}, deletion_seg_grad_cam=area)
            write_json(tmp_path / run / f"fold{k}" / "metrics.json", metrics)
    curve = [{"fraction": 0.0, "dice_WT": 0.5}, {"fraction": 0.5, "dice_WT": 0.3}]
    write_json(tmp_path / "proto_seg" / "fold0" / "pruning.json", {"curve": curve})
    table = write_seg_table(tmp_path).read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert "| proto_seg | 2 | 70.00 ± 10.00 |" in rows["proto_seg"]
    assert "| 10.00 ± 0.00 |" in rows["proto_seg"]  # the fold with an undefined HD95 is left out
    assert rows["segresnet"].endswith("| 55.00 ± 5.00 |")
    assert "| 0.50 | 30.00 ± 0.00 |" in table
    assert (tmp_path / "seg_table.csv").read_text().splitlines()[0].startswith("model,folds,Dice TC (%)")
