"""Bad inputs to data_prep: DICOM studies, NIfTI cases, manifests (batch mode: test_crash_safety_batches.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from data_prep.__main__ import main as data_prep_main
from data_prep.batch import cases_from_manifest
from data_prep.dicom_ingest import load_dicom_study
from data_prep.dicom_study_writer import write_synthetic_brain_study
from data_prep.pipeline import PrepOptions, prepare_nifti_case

from .conftest import expect_failure, record, truncate, with_ndim, with_voxel, write_not_nifti, zeros

COMPONENT = "data_prep"
SEQUENCES = ("t1", "t1ce", "t2", "flair")
FAST = PrepOptions(skull_strip=False, registration_spacing=3.0, threads=1)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The four sequences at 6 mm as a DICOM study (read-only: copy to damage)."""
    return write_synthetic_brain_study(tmp_path_factory.mktemp("prep") / "STUDY", spacing=6.0, distractors=False)


@pytest.fixture
def nifti(study, tmp_path) -> dict[str, Path]:
    """The study's four volumes as NIfTI files (writable)."""
    paths = {}
    for sequence, image in study.images.items():
        paths[sequence] = tmp_path / f"{sequence}.nii.gz"
        sitk.WriteImage(image, str(paths[sequence]))
    return paths


def _series_files(folder: Path, series_uid: str) -> list[Path]:
    return [
        p
        for p in sorted(folder.rglob("*.dcm"))
        if pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID == series_uid
    ]


def test_dicom_file_without_pixel_data_names_series_and_file(study, tmp_path):
    folder = Path(shutil.copytree(study.folder, tmp_path / "study"))
    victim = _series_files(folder, study.series["t2"])[5]
    ds = pydicom.dcmread(victim)
    del ds.PixelData
    ds.save_as(victim)
    expect_failure(
        "DICOM file without pixel data",
        COMPONENT,
        ValueError,
        rf"AX T2 TSE.*: file .*{victim.name} has no pixel data",
        load_dicom_study,
        folder,
        tmp_path / "out",
    )


def test_a_series_of_another_patient_in_the_study_names_that_series(study, tmp_path):
    folder = Path(shutil.copytree(study.folder, tmp_path / "study"))
    intruder = folder / "099_OTHER_PATIENT"
    intruder.mkdir()
    for k, path in enumerate(_series_files(folder, study.series["flair"])):
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.SeriesInstanceUID, ds.SeriesNumber = "SOMEONE_ELSE", "2.25.99", 99
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"2.25.99{k}"
        ds.save_as(intruder / path.name)
    expect_failure(
        "mixed patients in one study",
        COMPONENT,
        ValueError,
        r"series of a different patient in one study folder \(expected PatientID 'SYNTH0001' like the other 4 "
        r"series\):.*2\.25\.99.*'SOMEONE_ELSE'",
        load_dicom_study,
        folder,
        tmp_path / "out",
    )


# case -> (damage of the T2 (or named) file, problem pattern)
NIFTI_CASES = {
    "data_prep: empty .nii.gz": (lambda p: p["t2"].write_bytes(b""), r"t2 file .*t2\.nii\.gz is not a readable image"),
    "data_prep: truncated .nii.gz": (lambda p: truncate(p["t1"]), r"t1 file .*t1\.nii\.gz is truncated or corrupt \(EOFError"),
    "data_prep: non-NIfTI .nii.gz": (lambda p: write_not_nifti(p["flair"]), r"flair file .* is not a readable image"),
    "data_prep: 2-D volume": (lambda p: with_ndim(p["t2"], 2), r"t2 file .* must be a 3-D volume; received size"),
    "data_prep: 4-D volume": (lambda p: with_ndim(p["t1ce"], 4), r"t1ce file .* must be a 3-D volume; received size"),
    "data_prep: NaN voxel": (lambda p: with_voxel(p["t2"], np.nan), r"t2 file .* has 1 NaN/Inf voxel\(s\); expected finite"),
    "data_prep: all-zero volume": (lambda p: zeros(p["t1"]), r"t1 file .* has only 0 voxels; expected an image"),
    "data_prep: missing sequence file": (lambda p: p["flair"].unlink(), r"CASE: flair file .*flair\.nii\.gz does not exist"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(NIFTI_CASES))
def test_a_bad_nifti_input_fails_fast_naming_subject_sequence_and_file(nifti, tmp_path, case):
    damage, problem = NIFTI_CASES[case]
    damage(nifti)
    out = tmp_path / "out"
    expect_failure(case, COMPONENT, (ValueError, FileNotFoundError), "CASE: " + problem.removeprefix("CASE: "),
                   prepare_nifti_case, nifti, out, "CASE", FAST)  # fmt: skip
    assert not out.exists() or list(out.iterdir()) == []  # not even a hidden working folder is left


@pytest.mark.parametrize(
    ("case", "content", "problem"),
    [
        ("manifest empty", b"", "has no subject_id column; .*header: none, the file is empty"),
        ("manifest lacks subject_id", b"case,dicom\nP1,studies/P1\n", "has no subject_id column.*header: case, dicom"),
        ("manifest header only", b"subject_id,dicom\n", "has no case rows"),
        ("manifest non-UTF-8 bytes", "subject_id,dicom\nP\u00e9,x\n".encode("latin-1"), "is not UTF-8 text"),
        ("manifest subject id with ../", b"subject_id,dicom\n../escape,studies/P1\n", "subject_id must be letters"),
        ("manifest row without inputs", b"subject_id,dicom,t1\nP1,,a.nii.gz\n", "line 2: needs a 'dicom' folder"),
    ],
)
def test_a_bad_manifest_is_a_one_line_error_with_exit_status_2(tmp_path, capsys, case, content, problem):
    manifest = tmp_path / "cases.csv"
    manifest.write_bytes(content)
    expect_failure(case, "data_prep (manifest)", ValueError, problem, cases_from_manifest, manifest)
    status = data_prep_main(["batch", "--manifest", str(manifest), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: --manifest: ") and err.count("\n") == 1


def test_prepare_command_refuses_a_subject_id_with_a_path(tmp_path, nifti, capsys):
    args = ["prepare", "--nifti", *(str(nifti[s]) for s in SEQUENCES), "--subject", "../../etc", "--out", str(tmp_path)]
    assert data_prep_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --subject: subject_id must be letters") and "'../../etc'" in err
    assert not (tmp_path.parent / "etc").exists()
    record("data_prep prepare --subject ../../etc", "data_prep (command line)", "exit 2: " + err.strip())
