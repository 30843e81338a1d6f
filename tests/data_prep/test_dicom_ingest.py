"""DICOM study scanning, checks and dcm2niix conversion on generated studies; each failure names the series."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from data_prep.dicom_ingest import convert_series, load_dicom_study, scan_study
from data_prep.dicom_study_writer import SeriesSpec, write_dicom_study, write_synthetic_brain_study
from data_prep.geometry import index_affine_lps


@pytest.fixture
def study_copy(study, tmp_path):
    """A writable copy of the session's study."""
    return shutil.copytree(study.folder, tmp_path / "study")


def _series_dir(folder, uid):
    return next(
        p.parent
        for p in sorted(folder.rglob("*.dcm"))
        if pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID == uid
    )


def test_generated_study_has_unique_uids_and_realistic_tags(study):
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(study.folder.rglob("*.dcm"))]
    assert len({h.SOPInstanceUID for h in headers}) == len(headers)
    assert len({h.SeriesInstanceUID for h in headers}) == 7 and len({h.StudyInstanceUID for h in headers}) == 1
    t1ce = [h for h in headers if h.SeriesInstanceUID == study.series["t1ce"]][0]
    assert t1ce.ContrastBolusAgent == "Gadobutrol" and t1ce.Modality == "MR"
    flair = [h for h in headers if h.SeriesInstanceUID == study.series["flair"]][0]
    assert float(flair.InversionTime) == 2500.0 and float(flair.EchoTime) == 120.0
    for keyword in ("SeriesDescription", "RepetitionTime", "SeriesTime", "ImageType", "ImagePositionPatient"):
        assert keyword in flair


def test_study_writer_is_reproducible(tmp_path):
    image = sitk.Image([8, 6, 4], sitk.sitkInt16)
    files_a = write_dicom_study([SeriesSpec(image, "T1")], tmp_path / "a", seed=3)
    files_b = write_dicom_study([SeriesSpec(image, "T1")], tmp_path / "b", seed=3)
    assert list(files_a) == list(files_b)
    assert [p.read_bytes() for p in files_a[next(iter(files_a))]] == [
        p.read_bytes() for p in files_b[next(iter(files_b))]
    ]


def test_scan_groups_series_and_skips_files_that_are_not_dicom(study_copy):
    (study_copy / "README.txt").write_text("exported by PACS")
    series = scan_study(study_copy)
    assert [s.series_number for s in series] == [1, 2, 3, 4, 5, 6, 7]
    assert {s.n_slices for s in series if s.description == "AX T1 MPRAGE"} == {54}


def test_dcm2niix_conversion_keeps_the_written_geometry(study, tmp_path):
    t2 = next(s for s in scan_study(study.folder) if s.series_uid == study.series["t2"])
    nifti, sidecar = convert_series(t2, tmp_path, "t2")
    converted = sitk.ReadImage(str(nifti))
    written = study.images["t2"]
    assert sidecar.is_file()
    # dcm2niix may flip axes; the physical grid (every voxel centre) must be the same.
    flipped = sitk.DICOMOrient(converted, "LPS")
    np.testing.assert_allclose(index_affine_lps(flipped), index_affine_lps(sitk.DICOMOrient(written, "LPS")), atol=1e-3)
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(sitk.DICOMOrient(converted, "LPS")),
        np.round(sitk.GetArrayFromImage(sitk.DICOMOrient(written, "LPS"))),
    )


def test_load_dicom_study_identifies_and_converts_the_four_sequences(study, tmp_path):
    converted = load_dicom_study(study.folder, tmp_path)
    assert list(converted) == ["t1", "t1ce", "t2", "flair"]
    for sequence, item in converted.items():
        assert item.identification.series.series_uid == study.series[sequence]
        assert item.identification.confidence == 1.0
        assert sitk.ReadImage(str(item.nifti)).GetSize() == study.images[sequence].GetSize()


def test_truncated_dicom_file_is_an_error_naming_the_series_and_file(study, study_copy, tmp_path):
    victim = sorted(_series_dir(study_copy, study.series["flair"]).glob("*.dcm"))[10]
    victim.write_bytes(victim.read_bytes()[:-3000])
    with pytest.raises(ValueError, match="AX T2 FLAIR") as error:
        load_dicom_study(study_copy, tmp_path / "out")
    assert "truncated" in str(error.value) and victim.name in str(error.value)


def test_dicom_file_with_a_broken_header_is_an_error_naming_the_file(study_copy, tmp_path):
    garbage = study_copy / "003_AX_T2_FLAIR" / "IM9999.dcm"
    garbage.write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 2)
    with pytest.raises(ValueError, match="corrupt DICOM file .*IM9999.dcm"):
        load_dicom_study(study_copy, tmp_path / "out")


def test_missing_slice_is_an_error_naming_the_series(study, study_copy, tmp_path):
    sorted(_series_dir(study_copy, study.series["t2"]).glob("*.dcm"))[12].unlink()
    with pytest.raises(ValueError, match="AX T2 TSE.*slice spacing varies"):
        load_dicom_study(study_copy, tmp_path / "out")


def test_study_missing_flair_is_an_error_naming_the_missing_sequence(tmp_path):
    study = write_synthetic_brain_study(tmp_path / "study", spacing=6.0, sequences=("t1", "t2", "t1ce"))
    with pytest.raises(ValueError, match="could not identify FLAIR") as error:
        load_dicom_study(study.folder, tmp_path / "out")
    assert study.series["t2"] in str(error.value)  # every series is listed with what the rules found


def test_series_of_a_different_patient_is_an_error_naming_that_series(tmp_path):
    study = write_synthetic_brain_study(
        tmp_path / "study", spacing=6.0, distractors=False, tag_overrides={"t2": {"patient_id": "SOMEONE_ELSE"}}
    )
    with pytest.raises(ValueError, match="different patient") as error:
        load_dicom_study(study.folder, tmp_path / "out")
    assert study.series["t2"] in str(error.value) and "SOMEONE_ELSE" in str(error.value)
    assert study.series["flair"] not in str(error.value)
