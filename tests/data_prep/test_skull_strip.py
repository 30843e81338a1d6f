"""Skull stripping with deepbet (optional extra): a real brain mask when installed, a clear error when not."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import SimpleITK as sitk

from data_prep import skull_strip


def test_missing_deepbet_is_a_clear_error(monkeypatch, atlas3):
    skull_strip._extractor.cache_clear()
    monkeypatch.setitem(sys.modules, "deepbet", None)  # import fails as if not installed
    try:
        with pytest.raises(ImportError, match=r"pip install 'monai_protoshare\[bet\]'.*--skull-strip off"):
            skull_strip.brain_mask(atlas3.t1)
    finally:
        skull_strip._extractor.cache_clear()


def test_dicom_input_is_skull_stripped_by_default(small_study, tmp_path):
    pytest.importorskip("deepbet")
    import nibabel as nib

    from data_prep.atlas import load_atlas
    from data_prep.native_space import load_case_record
    from data_prep.pipeline import PrepOptions, prepare_dicom_study

    case = prepare_dicom_study(small_study.folder, tmp_path, "BET01", PrepOptions(registration_spacing=3.0, threads=2))
    record = load_case_record(case)
    assert record["options"]["skull_strip"] is True and record["output"]["skull_stripped"] is True
    assert "skull_strip" in record["timings_s"]
    masks = [np.asarray(nib.load(case / f"BET01_{s}.nii.gz").dataobj) != 0 for s in ("t1", "t1ce", "t2", "flair")]
    # One brain mask (the T1-CE's) applied to all four sequences.
    assert all((m == masks[1]).mean() > 0.99 for m in masks)
    # deepbet's mask, carried into SRI24 space, matches the atlas brain the study was made from.
    atlas = sitk.GetArrayFromImage(load_atlas(1.5).mask).transpose(2, 1, 0) > 0
    assert 2 * (masks[1] & atlas).sum() / (masks[1].sum() + atlas.sum()) > 0.93
