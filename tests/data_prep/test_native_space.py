"""map_to_original on a hand-built case record: oblique, anisotropic original grid and a known transform."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from data_prep.__main__ import main
from data_prep.atlas import sri24_grid
from data_prep.geometry import LPS_TO_RAS, index_affine_lps, matrix_from_transform
from data_prep.native_space import load_case_record, map_to_original
from data_prep.pipeline import RECORD_FORMAT


@pytest.fixture
def record() -> dict:
    """Output: the 1.5 mm SRI24 grid. Original T1-CE: an oblique 1 x 1.2 x 3 mm grid; a known rigid transform."""
    euler = sitk.Euler3DTransform()
    euler.SetRotation(0.1, -0.15, 0.2)
    euler.SetTranslation((-120.0, 110.0, -60.0))
    to_original = matrix_from_transform(euler)
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(0.0, 0.0, 0.3)
    original = np.eye(4)
    original[:3, :3] = np.asarray(rotation.GetMatrix()).reshape(3, 3) @ np.diag([1.0, 1.2, 3.0])
    # Place the original grid so that it covers the mapped output field of view.
    centre_out = index_affine_lps(sri24_grid(1.5)) @ [80, 80, 51, 1]
    original[:3, 3] = (to_original @ centre_out)[:3] - original[:3, :3] @ [100, 100, 30]
    grid = index_affine_lps(sri24_grid(1.5))
    entry = {
        "original": {
            "shape": [200, 200, 60],
            "affine_lps": original.tolist(),
            "affine_ras": (LPS_TO_RAS @ original).tolist(),
        },
        "output_to_original_lps": to_original.tolist(),
    }
    return {
        "format": RECORD_FORMAT,
        "subject_id": "HAND01",
        "output": {"shape": [160, 160, 103], "affine_lps": grid.tolist(), "affine_ras": (LPS_TO_RAS @ grid).tolist()},
        "sequences": {s: entry for s in ("t1", "t1ce", "t2", "flair")},
    }


def test_a_labelled_voxel_lands_on_the_original_voxel_the_transform_predicts(record):
    labels = np.zeros((160, 160, 103), np.uint8)
    labels[60:66, 90:96, 40:46] = 3
    native = map_to_original(labels, record, interpolation="nearest")
    assert native.shape == (200, 200, 60)
    np.testing.assert_allclose(native.affine, record["sequences"]["t1ce"]["original"]["affine_ras"], atol=1e-6)
    centre_out = np.asarray(record["output"]["affine_lps"]) @ [62.5, 92.5, 42.5, 1.0]
    predicted = LPS_TO_RAS @ np.asarray(record["sequences"]["t1ce"]["output_to_original_lps"]) @ centre_out
    found = native.affine @ [*np.argwhere(np.asarray(native.dataobj) == 3).mean(axis=0), 1.0]
    assert np.linalg.norm(found[:3] - predicted[:3]) < 1.5  # within a voxel of the anisotropic grid
    assert int(native.header["sform_code"]) == 1 and native.get_data_dtype() == np.uint8


def test_a_nibabel_image_on_another_sri24_grid_maps_the_same_way(record):
    one_mm = sri24_grid(1.0)
    data = np.zeros(one_mm.GetSize(), np.float32)
    data[93:102, 138:147, 62:71] = 1.0  # the same physical block as above, on the 1 mm grid
    image = nib.Nifti1Image(data, LPS_TO_RAS @ index_affine_lps(one_mm))
    native = map_to_original(image, record)
    assert native.get_data_dtype() == np.float32 and native.get_fdata().max() > 0.9
    labels = np.zeros((160, 160, 103), np.float32)
    labels[62:68, 92:98, 41:47] = 1.0
    from_array = map_to_original(labels, record)
    a, b = native.get_fdata() > 0.5, from_array.get_fdata() > 0.5
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.6  # same place; block edges differ by a voxel


def test_bad_records_and_sequences_are_rejected(record, tmp_path):
    with pytest.raises(ValueError, match="format"):
        load_case_record({**record, "format": "something else"})
    with pytest.raises(FileNotFoundError, match="case record"):
        load_case_record(tmp_path / "CASE")
    with pytest.raises(ValueError, match="flair"):
        map_to_original(np.zeros((160, 160, 103)), record, sequence="flar")


def test_cli_to_original_writes_the_native_nifti(record, tmp_path):
    import json

    case = tmp_path / "HAND01"
    case.mkdir()
    (case / "HAND01_data_prep.json").write_text(json.dumps(record))
    grid = np.asarray(record["output"]["affine_ras"])
    nib.save(nib.Nifti1Image(np.ones((160, 160, 103), np.float32), grid), tmp_path / "map.nii.gz")
    assert main(["to-original", str(tmp_path / "map.nii.gz"), str(case), "--out", str(tmp_path / "native.nii.gz")]) == 0
    assert nib.load(tmp_path / "native.nii.gz").shape == (200, 200, 60)


def test_cli_rejects_a_malformed_series_override(tmp_path):
    with pytest.raises(SystemExit, match="--series expects"):
        main(
            ["prepare", "--dicom", str(tmp_path), "--subject", "S1", "--out", str(tmp_path / "o"), "--series", "t1ce:7"]
        )
