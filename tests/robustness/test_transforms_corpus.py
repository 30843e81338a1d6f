"""Bad files given straight to the preprocessing (as a datalist JSON, the Deploy or the Label app would): each
failure names the subject, the file and the problem instead of failing deep inside nibabel or MONAI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_protoshare.data.transforms import (
    eval_transforms,
    inference_transforms,
    preprocessing_transforms,
    to_native_space,
    transform_error,
)

from .conftest import (
    SEQUENCES,
    case_file,
    expect_failure,
    shifted,
    subject,
    truncate,
    with_ndim,
    with_shape,
    with_voxel,
    write_not_nifti,
    zeros,
)

COMPONENT = "transforms (preprocessing)"
GRID = {"spatial_size": (16, 16, 8), "pixdim": 12.0}


def _item(root, index: int = 1) -> dict:
    return {
        "subject_id": subject(index),
        "image": [str(case_file(root, index, s)) for s in SEQUENCES],
        "seg": str(case_file(root, index, "seg")),
        "label": 1,
    }


def test_the_checks_pass_a_good_case(cohort):
    out = eval_transforms(**GRID)(_item(cohort))
    assert tuple(out["image"].shape) == (4, 16, 16, 8) and torch.isfinite(out["image"]).all()


# case -> (damage of case 1, pattern of the error a transform raised)
CASES = {
    "transforms: truncated .nii.gz": (lambda r: truncate(case_file(r, 1, "t1ce")), r"_t1ce\.nii\.gz: unreadable voxel data \(truncated"),
    "transforms: non-NIfTI .nii.gz": (lambda r: write_not_nifti(case_file(r, 1, "t2")), r"_t2\.nii\.gz: not a readable NIfTI file"),
    "transforms: 4-D sequence": (lambda r: with_ndim(case_file(r, 1, "flair"), 4), r"_flair\.nii\.gz: expected a 3-D image, got shape \(20, 20, 13, 2\)"),
    "transforms: NaN voxel": (lambda r: with_voxel(case_file(r, 1, "flair"), np.nan), r"_flair\.nii\.gz: 1 NaN/Inf voxel"),
    "transforms: Inf voxel": (lambda r: with_voxel(case_file(r, 1, "t1"), -np.inf), r"_t1\.nii\.gz: 1 NaN/Inf voxel"),
    "transforms: all-zero sequence": (lambda r: zeros(case_file(r, 1, "t1")), r"_t1\.nii\.gz: all voxels are 0"),
    "transforms: sequences of different shapes": (lambda r: with_shape(case_file(r, 1, "t2"), (20, 19, 13)), r"_t2\.nii\.gz: shape \(20, 19, 13\) differs"),
    "transforms: sequences with different affines": (lambda r: shifted(case_file(r, 1, "t1")), r"_t1\.nii\.gz: affine differs .* 7 mm"),
    "transforms: segmentation of another grid": (lambda r: with_shape(case_file(r, 1, "seg"), (10, 10, 13)), r"_seg\.nii\.gz: shape \(10, 10, 13\) differs"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_file_in_preprocessing_names_subject_and_file(cohort, case):
    damage, pattern = CASES[case]
    damage(cohort)
    transform = eval_transforms(**GRID) if "segmentation" in case else inference_transforms(**GRID)
    error = expect_failure(
        case,
        COMPONENT,
        RuntimeError,
        rf"{subject(1)}: cannot preprocess: {subject(1)}{pattern}",
        transform,
        _item(cohort),
    )
    cause = transform_error(error)
    assert isinstance(cause, ValueError) and str(cause).startswith(f"{subject(1)}: cannot preprocess: ")


def test_a_bad_grid_or_map_is_named(cohort):
    expect_failure(
        "preprocessing with spatial_size (0, 16, 8)",
        COMPONENT,
        ValueError,
        r"spatial_size must be positive and pixdim > 0 mm, got \(0, 16, 8\)",
        preprocessing_transforms,
        (0, 16, 8),
        12.0,
    )
    transform = inference_transforms(**GRID)
    image = transform(_item(cohort))["image"]
    expect_failure(
        "map of the wrong shape sent back to native space",
        COMPONENT,
        ValueError,
        r"volume must be \(C, H, W, D\) on the preprocessed grid \(16, 16, 8\), got shape \(1, 8, 8, 8\)",
        to_native_space,
        torch.zeros(1, 8, 8, 8),
        image,
        transform,
    )
