"""Batch commands killed mid-case (SIGKILL) and given bad cases: evidence export and data_prep report the bad
cases in their summaries, process every good one, leave no half-written case, and resume by skipping the
finished cases. The jobs run in child processes (:mod:`tests.robustness.kill_points`)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk

from data_prep.batch import FAILURES_FILE, cases_from_manifest, run_batch
from data_prep.brats_layout import is_complete
from data_prep.dicom_study_writer import write_synthetic_brain_study
from data_prep.pipeline import PrepOptions
from monai_protoshare.workflows.export_evidence import SUMMARY_NAME, export_evidence
from tests.explain.evidence_cases import image_transform, tiny_network, write_case

from .conftest import record, truncate, with_voxel
from .kill_points import run_to_pause


def _same(a, b, atol: float = 1e-6) -> bool:
    """Equal JSON values, floats within ``atol``."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k], atol) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y, atol) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=0.0, abs_tol=atol)
    return a == b


def _hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


def test_evidence_export_killed_mid_case_leaves_no_case_folder_and_resumes_by_skipping(tmp_path):
    data = tmp_path / "data"
    datalist = [write_case(data, f"case00{i}", label=i % 2, seed=i) for i in range(1, 4)]
    datalist_json = tmp_path / "datalist.json"
    datalist_json.write_text(json.dumps(datalist))
    out, marker = tmp_path / "evidence", tmp_path / "marker"

    assert run_to_pause(marker, "evidence", str(datalist_json), str(out), str(marker), "case002") == "evidence:case002"
    assert (out / "case001" / "report.json").is_file()
    assert not (out / "case002").exists() and not (out / "case003").exists()
    assert [p.name.startswith(".case002.partial-") for p in out.iterdir() if p.name.startswith(".")] == [True]

    summary = export_evidence(tiny_network(), datalist, image_transform(), out, top_k=2, figures=False, progress=False)
    assert summary.skipped == ["case001"] and summary.written == ["case002", "case003"] and not summary.failed
    assert _hidden_leftovers(out) == []
    fresh = export_evidence(
        tiny_network(), datalist, image_transform(), tmp_path / "fresh", top_k=2, figures=False, progress=False
    )
    assert not fresh.failed
    for item in datalist:
        case = item["subject_id"]
        report = json.loads((out / case / "report.json").read_text())
        # case001 was written by the one-thread child: floating-point sums may differ in the last bits
        assert _same(report, json.loads((tmp_path / "fresh" / case / "report.json").read_text())), case
        for name in [report["files"]["class_evidence"], *report["files"]["prototype_maps"]]:
            assert nib.load(out / case / name).shape == nib.load(item["image"][1]).shape
    assert json.loads((out / SUMMARY_NAME).read_text())["skipped"] == ["case001"]
    record(
        "SIGKILL during evidence export of case002 (2 of its NIfTI files written)",
        "evidence export",
        "case001 complete, no case002/case003 folder; re-run skipped case001, wrote case002-003, "
        "reports equal to an uninterrupted export",
    )


def test_data_prep_batch_reports_bad_cases_and_killed_mid_case_resumes_by_skipping(tmp_path):
    """Batch behaviour and crash safety of data_prep in one batch (one registration per good case is the cost):
    P1 good, three bad cases (truncated T1-CE, an Inf voxel in FLAIR, a DICOM study with a series of another
    patient), then P2, killed after its volumes are written but before its record. The re-run skips P1, reports
    the bad cases again, prepares P2, and no folder of a bad or unfinished case is ever visible."""
    study = write_synthetic_brain_study(tmp_path / "study", spacing=6.0, distractors=False)
    rows = ["subject_id,dicom,t1,t1ce,t2,flair"]
    for subject in ("P1", "TRUNC", "INF", "P2"):
        for sequence, image in study.images.items():
            sitk.WriteImage(image, str(tmp_path / f"{subject}_{sequence}.nii.gz"))
        rows.append(",".join([subject, "", *(f"{subject}_{s}.nii.gz" for s in ("t1", "t1ce", "t2", "flair"))]))
    truncate(tmp_path / "TRUNC_t1ce.nii.gz")
    with_voxel(tmp_path / "INF_flair.nii.gz", np.inf)
    mixed = Path(shutil.copytree(study.folder, tmp_path / "MIXED"))
    for path in sorted(mixed.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        if ds.SeriesInstanceUID == study.series["t2"]:
            ds.PatientID = "SOMEONE_ELSE"
            ds.save_as(path)
    rows.insert(4, "MIXED,MIXED,,,,")
    manifest = tmp_path / "cases.csv"
    manifest.write_text("\n".join(rows) + "\n")
    out, marker = tmp_path / "out", tmp_path / "marker"

    assert run_to_pause(marker, "data_prep", str(manifest), str(out), str(marker), "P2") == "data_prep:P2"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["P1"] and is_complete(out, "P1")
    assert [p.name for p in out.iterdir() if p.name.startswith(".")][0].startswith(".partial-P2-")  # hidden work

    options = PrepOptions(skull_strip=False, registration_spacing=3.0, threads=1)
    summary = run_batch(cases_from_manifest(manifest), out, options, workers=1)
    assert summary.skipped == ["P1"] and summary.done == ["P2"]
    assert set(summary.failed) == {"TRUNC", "INF", "MIXED"}
    assert "TRUNC: t1ce file" in summary.failed["TRUNC"] and "truncated or corrupt" in summary.failed["TRUNC"]
    assert "INF: flair file" in summary.failed["INF"] and "1 NaN/Inf voxel" in summary.failed["INF"]
    assert "different patient" in summary.failed["MIXED"] and "SOMEONE_ELSE" in summary.failed["MIXED"]
    assert all("Traceback" not in message for message in summary.failed.values())  # expected errors: no stack
    assert sorted(p.name for p in out.iterdir()) == sorted(["P1", "P2", "name_mapping.csv", FAILURES_FILE])
    for subject in ("P1", "P2"):
        for sequence in ("t1", "t1ce", "t2", "flair"):
            assert nib.load(out / subject / f"{subject}_{sequence}.nii.gz").get_fdata().any()
    assert (out / "name_mapping.csv").read_text().splitlines()[1:] == ["NA,NA,NA,NA,NA,P1", "NA,NA,NA,NA,NA,P2"]
    assert json.loads((out / FAILURES_FILE).read_text())["failed"] == summary.failed
    report = summary.report()
    assert report.startswith("data_prep: 1 done, 1 skipped (finished before), 3 failed")
    record("data_prep batch: 2 good + 3 bad cases", "data_prep batch", report.replace("\n", " / "))
    record(
        "SIGKILL during data_prep batch, case P2 written but not its record",
        "data_prep batch",
        "P1 complete, no P2 folder (hidden .partial-P2-* only); re-run removed it, skipped P1, prepared P2",
    )
