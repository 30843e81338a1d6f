"""Batch mode: parallel workers, failures summarised, nothing half-written, resume, crashed workers."""

from __future__ import annotations

import json
import os

import pytest

from data_prep.batch import FAILURES_FILE, CaseSpec, cases_from_manifest, cases_from_study_root, run_batch
from data_prep.brats_layout import is_complete
from data_prep.pipeline import PrepOptions

FAST = PrepOptions(skull_strip=False, registration_spacing=3.0)


def crash_on_crash_subject(case: CaseSpec, out_root, options):
    """A worker (importable by spawned processes) whose process dies on the case named CRASH."""
    if case.subject_id == "CRASH":
        os._exit(3)
    return case.subject_id, None, 0.0


def test_one_bad_study_never_stops_the_batch_and_resume_skips_finished_cases(small_study, tmp_path):
    empty = tmp_path / "empty_study"
    empty.mkdir()
    cases = [
        CaseSpec("GOOD", dicom=small_study.folder),
        CaseSpec("NODICOM", dicom=empty),
        CaseSpec("NOFILE", nifti={s: tmp_path / f"{s}.nii.gz" for s in ("t1", "t1ce", "t2", "flair")}, grade="LGG"),
    ]
    out = tmp_path / "out"
    summary = run_batch(cases, out, FAST, workers=2)
    assert summary.done == ["GOOD"] and summary.skipped == []
    assert set(summary.failed) == {"NODICOM", "NOFILE"}
    assert "no DICOM files" in summary.failed["NODICOM"] and "NOFILE: t1 file" in summary.failed["NOFILE"]
    assert "FAILED NODICOM" in summary.report()
    assert is_complete(out, "GOOD") and not (out / "NODICOM").exists() and not (out / "NOFILE").exists()
    assert (out / "name_mapping.csv").read_text().splitlines()[1:] == ["NA,NA,NA,NA,NA,GOOD"]
    assert set(json.loads((out / FAILURES_FILE).read_text())["failed"]) == {"NODICOM", "NOFILE"}

    # An interrupted run leaves a hidden working folder; the next run removes it and skips finished cases.
    (out / ".partial-NOFILE-deadbeef").mkdir()
    again = run_batch(cases, out, FAST, workers=2)
    assert again.skipped == ["GOOD"] and again.done == [] and set(again.failed) == {"NODICOM", "NOFILE"}
    assert not [p for p in out.iterdir() if p.name.startswith(".partial")]


def test_a_crashing_worker_is_attributed_to_its_case_and_the_others_finish(tmp_path):
    cases = [CaseSpec(name, dicom=tmp_path) for name in ("A", "CRASH", "B", "C")]
    summary = run_batch(cases, tmp_path / "out", FAST, workers=2, worker=crash_on_crash_subject)
    assert sorted(summary.done) == ["A", "B", "C"]
    assert list(summary.failed) == ["CRASH"] and "worker process died" in summary.failed["CRASH"]


def test_cases_from_a_study_root_and_a_manifest(tmp_path):
    for name in ("P01", "P02", ".hidden"):
        (tmp_path / "studies" / name).mkdir(parents=True)
    assert [c.subject_id for c in cases_from_study_root(tmp_path / "studies")] == ["P01", "P02"]
    manifest = tmp_path / "cases.csv"
    manifest.write_text(
        "subject_id,dicom,t1,t1ce,t2,flair,grade,t1ce_series\n"
        "P01,studies/P01,,,,,HGG,7\n"
        "N01,,a/t1.nii.gz,a/t1ce.nii.gz,a/t2.nii.gz,a/flair.nii.gz,,\n"
    )
    first, second = cases_from_manifest(manifest)
    assert first.dicom == tmp_path / "studies" / "P01" and first.grade == "HGG" and first.overrides == {"t1ce": "7"}
    assert second.nifti["flair"] == tmp_path / "a" / "flair.nii.gz" and second.grade == "NA"
    manifest.write_text("subject_id,dicom\nP03,\n")
    with pytest.raises(ValueError, match="line 2: needs a 'dicom' folder"):
        cases_from_manifest(manifest)


def test_batch_rejects_duplicate_subjects_and_bad_case_specs(tmp_path):
    with pytest.raises(ValueError, match="duplicate subject ids"):
        run_batch([CaseSpec("A", dicom=tmp_path), CaseSpec("A", dicom=tmp_path)], tmp_path / "out")
    with pytest.raises(ValueError, match="exactly one of dicom"):
        CaseSpec("A")


def test_cli_batch_prints_the_failures_and_exits_with_1(tmp_path, capsys):
    from data_prep.__main__ import main

    manifest = tmp_path / "cases.csv"
    manifest.write_text("subject_id,t1,t1ce,t2,flair\nGHOST,t1.nii.gz,t1ce.nii.gz,t2.nii.gz,flair.nii.gz\n")
    assert main(["batch", "--manifest", str(manifest), "--out", str(tmp_path / "out"), "--workers", "1"]) == 1
    printed = capsys.readouterr().out
    assert "0 done" in printed and "FAILED GHOST: FileNotFoundError" in printed
