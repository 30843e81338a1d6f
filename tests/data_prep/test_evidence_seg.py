import json

import pytest

from data_prep.brats_layout import case_record_path
from data_prep.evidence_seg import case_seg_writer
from data_prep.pipeline import RECORD_FORMAT


def _record(root, kind):
    path = case_record_path(root, "case1")
    path.parent.mkdir(parents=True)
    source = {"kind": kind, "files": ["a.dcm"]} if kind == "dicom" else {"kind": kind, "file": "t1ce.nii.gz"}
    path.write_text(json.dumps({"format": RECORD_FORMAT, "sequences": {"t1ce": {"source": source}}}))
    return path.parent / "case1_t1ce.nii.gz"


def test_only_a_case_data_prep_made_from_dicom_gets_a_seg_writer(tmp_path):
    """(The SEG it writes is checked in tests/explain/test_export_evidence.py.)"""
    assert case_seg_writer(tmp_path / "plain" / "plain_t1ce.nii.gz") is None  # no record: a NIfTI case
    assert case_seg_writer(_record(tmp_path / "nifti", "nifti")) is None
    assert callable(case_seg_writer(_record(tmp_path / "dicom", "dicom")))


def test_a_file_that_is_not_a_case_record_is_refused(tmp_path):
    path = case_record_path(tmp_path, "case1")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="case record format must be"):
        case_seg_writer(path.parent / "case1_t1.nii.gz")
