"""LPS/RAS conversions, grids and point transforms."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from data_prep.geometry import (
    LPS_TO_RAS,
    index_affine_lps,
    make_grid,
    matrix_from_transform,
    nibabel_to_sitk,
    resample,
    sitk_to_nibabel,
    transform_from_matrix,
)


def _oblique_affine_ras() -> np.ndarray:
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(0.2, -0.1, 0.3)
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(rotation.GetMatrix()).reshape(3, 3) @ np.diag([0.9, 1.2, 4.0])
    affine[:3, 3] = [-100.0, 20.0, -50.0]
    return affine


def test_nibabel_and_simpleitk_images_round_trip_with_the_same_physical_grid():
    data = np.random.default_rng(0).random((7, 5, 4)).astype(np.float32)
    image = nib.Nifti1Image(data, _oblique_affine_ras())
    converted = nibabel_to_sitk(image)
    # Voxel (i, j, k) sits at the same physical point: nibabel gives RAS, SimpleITK LPS.
    ras = image.affine @ [2, 3, 1, 1]
    lps = converted.TransformIndexToPhysicalPoint((2, 3, 1))
    np.testing.assert_allclose(LPS_TO_RAS @ ras, [*lps, 1.0], atol=1e-5)
    assert converted[2, 3, 1] == pytest.approx(data[2, 3, 1])
    back = sitk_to_nibabel(converted)
    np.testing.assert_allclose(back.affine, image.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(back.dataobj), data)
    assert int(back.header["qform_code"]) == int(back.header["sform_code"]) == 1


def test_make_grid_rejects_sheared_affines():
    affine = np.eye(4)
    affine[0, 1] = 0.5
    with pytest.raises(ValueError, match="shear"):
        make_grid((4, 4, 4), affine)


def test_point_transform_matrices_round_trip_through_simpleitk():
    euler = sitk.Euler3DTransform()
    euler.SetCenter((10.0, -20.0, 30.0))
    euler.SetRotation(0.1, -0.2, 0.05)
    euler.SetTranslation((3.0, -4.0, 5.0))
    matrix = matrix_from_transform(euler)
    point = (12.0, 7.0, -3.0)
    np.testing.assert_allclose(matrix @ [*point, 1.0], [*euler.TransformPoint(point), 1.0], atol=1e-9)
    np.testing.assert_allclose(transform_from_matrix(matrix).TransformPoint(point), euler.TransformPoint(point))


def test_resample_moves_a_blob_by_the_given_transform():
    grid = make_grid((20, 20, 20), np.diag([2.0, 2.0, 2.0, 1.0]))
    blob = sitk.GetArrayFromImage(grid).astype(np.float32)
    blob[10, 10, 5] = 100.0  # index (i, j, k) = (5, 10, 10): point (10, 20, 20) mm
    image = sitk.GetImageFromArray(blob)
    image.CopyInformation(grid)
    shift = np.eye(4)
    shift[:3, 3] = [6.0, 0.0, 0.0]  # output point x samples the input at x + 6 mm
    moved = sitk.GetArrayFromImage(resample(image, grid, shift, sitk.sitkNearestNeighbor))
    assert np.argwhere(moved == 100.0).tolist() == [[10, 10, 2]]
    assert index_affine_lps(grid)[0, 0] == 2.0
