"""Bad cases given to inference (the bundle's datalist) and to the evidence export: named, and never a half case."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator

from monai_protoshare.handlers.evidence_export import EvidenceExportHandler
from monai_protoshare.networks import build_network
from monai_protoshare.workflows.demo import DEFAULT_BUNDLES_DIR, bundle_workflow
from monai_protoshare.workflows.export_evidence import SUMMARY_NAME, export_evidence
from monai_protoshare.workflows.options import BundleOptionError, inference_datalist
from tests.explain.evidence_cases import image_transform, tiny_network, write_case

from .conftest import TINY, expect_failure, record, shifted, truncate, with_voxel, zeros

COMPONENT = "inference datalist"


@pytest.fixture(scope="module")
def cases_dir(tmp_path_factory) -> Path:
    """A folder of three case folders (no name_mapping.csv), the inference bundle's plain input; read-only."""
    folder = tmp_path_factory.mktemp("cases")
    for i in range(1, 4):
        write_case(folder, f"case00{i}", label=i % 2, seed=i)
    return folder


@pytest.fixture
def cases(cases_dir, tmp_path) -> Path:
    return Path(shutil.copytree(cases_dir, tmp_path / "cases"))


def _file(root: Path, case: str, kind: str) -> Path:
    return root / case / f"{case}_{kind}.nii.gz"


# case -> (damage, pattern)
FOLDER_CASES = {
    "inference folder: truncated T1-CE": (lambda r: truncate(_file(r, "case002", "t1ce")), r"case002 \| case002_t1ce\.nii\.gz \| unreadable voxel data \(truncated"),
    "inference folder: NaN in FLAIR": (lambda r: with_voxel(_file(r, "case003", "flair"), np.nan), r"case003 \| case003_flair\.nii\.gz \| 1 NaN/Inf voxel"),
    "inference folder: all-zero T2": (lambda r: zeros(_file(r, "case001", "t2")), r"case001 \| case001_t2\.nii\.gz \| all voxels are 0"),
    "inference folder: T1 of another session (affine)": (lambda r: shifted(_file(r, "case002", "t1")), r"case002 \| case002_t1\.nii\.gz \| affine differs"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(FOLDER_CASES))
def test_a_bad_case_in_a_folder_of_cases_is_named_before_inference_starts(cases, case):
    damage, pattern = FOLDER_CASES[case]
    damage(cases)
    error = expect_failure(case, COMPONENT, BundleOptionError, "--dataset_dir: .*" + pattern, inference_datalist, cases)
    assert error.code == 2


def test_bad_datalist_json_files_are_named(cases, tmp_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"testing": [{"image": ')
    expect_failure("datalist JSON cut short", COMPONENT, BundleOptionError, r"datalist '.*bad\.json' is not a JSON file",
                   inference_datalist, bad_json)  # fmt: skip
    no_image = tmp_path / "no_image.json"
    no_image.write_text(json.dumps({"testing": [{"subject_id": "x", "t1": "a.nii.gz"}]}))
    expect_failure("datalist JSON item without 'image'", COMPONENT, BundleOptionError,
                   r"'testing' must be a list of items with an 'image' list of four paths", inference_datalist, no_image)  # fmt: skip
    three = tmp_path / "three.json"
    paths = [str(_file(cases, "case001", s)) for s in ("t1", "t1ce", "t2")]
    three.write_text(json.dumps({"testing": [{"subject_id": "case001", "image": paths}]}))
    expect_failure("datalist JSON item with three sequences", COMPONENT, BundleOptionError,
                   r"case001 \| image \| expected four paths \[T1, T1-CE, T2, FLAIR\]", inference_datalist, three)  # fmt: skip
    missing = tmp_path / "missing.json"
    paths = [str(_file(cases, "case001", s)) for s in ("t1", "t1ce", "t2")] + ["nowhere/flair.nii.gz"]
    missing.write_text(json.dumps({"testing": [{"subject_id": "case001", "image": paths}]}))
    expect_failure("datalist JSON item with a missing file", COMPONENT, BundleOptionError,
                   r"case001 \| flair\.nii\.gz \| missing flair file .*nowhere/flair\.nii\.gz", inference_datalist, missing)  # fmt: skip


def test_inference_bundle_names_the_bad_case_and_writes_nothing(cases, tmp_path):
    truncate(_file(cases, "case003", "t2"))
    ckpt = tmp_path / "model.pt"
    torch.save(tiny_network().state_dict(), ckpt)
    net = {k: TINY[k] for k in ("spatial_size", "pixdim", "encoder_layers", "encoder_widths", "embedding_dim")}
    out = tmp_path / "inference"
    values = {**net, "dataset_dir": str(cases), "output_dir": str(out), "model_path": str(ckpt), "num_workers": 0}
    workflow = bundle_workflow(DEFAULT_BUNDLES_DIR / "um_protoshare", ["inference.yaml"], "infer", **values)
    expect_failure("inference bundle on a folder with a truncated case", "bundle inference", BundleOptionError,
                   r"case003 \| case003_t2\.nii\.gz \| unreadable voxel data", workflow.run)  # fmt: skip
    assert not (out / "predictions.csv").exists() and not (out / "evidence").exists()  # nothing for any case


def test_evidence_export_reports_bad_cases_in_its_summary_and_exports_every_good_one(cases, tmp_path):
    """Batch behaviour of the evidence export: files that bypassed the reader, and unusable subject ids."""
    datalist = [
        {"subject_id": c, "image": [str(_file(cases, c, s)) for s in ("t1", "t1ce", "t2", "flair")]}
        for c in ("case001", "case002", "case003")
    ]
    truncate(_file(cases, "case002", "t1ce"))
    datalist.append({**datalist[0], "subject_id": "../escape"})
    datalist.append({**datalist[0], "subject_id": "Patient 01"})
    out = tmp_path / "evidence"
    summary = export_evidence(tiny_network(), datalist, image_transform(), out, top_k=2, figures=False, progress=False)
    assert summary.written == ["case001", "case003"]
    assert set(summary.failed) == {"case002", "../escape", "Patient 01"}
    assert "case002_t1ce.nii.gz" in summary.failed["case002"] and "truncated" in summary.failed["case002"]
    for bad_id in ("../escape", "Patient 01"):
        assert summary.failed[bad_id].startswith("ValueError: subject_id must be letters, digits")
    assert sorted(p.name for p in out.iterdir()) == ["case001", "case003", SUMMARY_NAME, "prototypes.json"]
    assert not (tmp_path / "escape").exists()
    assert json.loads((out / SUMMARY_NAME).read_text())["failed"] == summary.failed
    for subject_id, message in summary.failed.items():
        record(f"evidence export: case {subject_id!r}", "evidence export (batch)", f"in summary.failed: {message}")
    record("evidence export: 2 good + 3 bad cases", "evidence export (batch)", summary.table().replace("\n", " / "))


def test_evidence_handler_skips_a_case_with_an_unusable_id_and_the_evaluation_goes_on(cases_dir, tmp_path):
    items = [
        {"subject_id": sid, "image": [str(_file(cases_dir, c, s)) for s in ("t1", "t1ce", "t2", "flair")]}
        for sid, c in (("case 001", "case001"), ("case002", "case002"))
    ]
    transform = image_transform()
    network = tiny_network()
    evaluator = SupervisedEvaluator(
        device="cpu", val_data_loader=DataLoader(Dataset(items, transform), batch_size=2), network=network
    )
    handler = EvidenceExportHandler(network, transform, tmp_path / "evidence", top_k=1, figure=False)
    handler.attach(evaluator)
    evaluator.run()
    assert handler.written == ["case002"] and list(handler.failures) == ["case 001"]
    assert "subject_id must be letters" in handler.failures["case 001"]
    record("evidence handler: subject id 'case 001' (a space)", "evidence export (inference handler)",
           f"case listed in failures, evaluation went on: {handler.failures['case 001']}")  # fmt: skip


def test_a_network_of_another_configuration_in_the_inference_bundle_is_named(cases_dir, tmp_path):
    ckpt = tmp_path / "model.pt"
    torch.save(
        build_network("xprotonet", encoder_layers=(1, 1), encoder_widths=(4, 8), embedding_dim=8).state_dict(), ckpt
    )
    net = {k: TINY[k] for k in ("spatial_size", "pixdim", "encoder_layers", "encoder_widths", "embedding_dim")}
    values = {**net, "dataset_dir": str(cases_dir), "output_dir": str(tmp_path / "out"), "model_path": str(ckpt)}
    expect_failure("inference bundle given XProtoNet weights", "bundle inference", BundleOptionError,
                   r"--model_path: '.*model\.pt' holds weights of another model or configuration",
                   bundle_workflow, DEFAULT_BUNDLES_DIR / "um_protoshare", ["inference.yaml"], "infer", **values)  # fmt: skip
