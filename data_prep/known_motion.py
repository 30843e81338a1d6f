"""Known rigid motions of the real SRI24 anatomy, and the error of a recovered transform (tests, benchmarks).

A symmetric phantom fools mutual information (measured in ``reference/data_prep.md`` §2); the atlas does
not. :func:`moved_atlas` moves it by a known rigid transform onto an anisotropic grid with another contrast
and noise; :func:`transform_error_mm` measures how far a recovered transform is from the truth over the
brain, in millimetres, and :func:`transform_error_deg` the angle of the residual rotation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from data_prep.atlas import Atlas
from data_prep.geometry import index_affine_lps, make_grid, matrix_from_transform, resample

__all__ = ["moved_atlas", "rigid_matrix", "transform_error_deg", "transform_error_mm"]


def rigid_matrix(rotation_deg: Sequence[float], shift_mm: Sequence[float], centre: Sequence[float]) -> np.ndarray:
    """4x4 LPS point transform: rotation about x, y, z (degrees) around ``centre``, then a shift (mm)."""
    euler = sitk.Euler3DTransform()
    euler.SetCenter([float(c) for c in centre])
    euler.SetRotation(*np.deg2rad(rotation_deg))
    euler.SetTranslation([float(s) for s in shift_mm])
    return matrix_from_transform(euler)


def moved_atlas(
    atlas: Atlas,
    rotation_deg: Sequence[float] = (8.0, -5.0, 6.0),
    shift_mm: Sequence[float] = (7.0, -9.0, 4.0),
    seed: int = 0,
) -> tuple[sitk.Image, np.ndarray]:
    """The atlas T1 moved rigidly onto a 2.7 x 2.7 x 4.8 mm grid, with an inverted (T2-like) contrast and noise.

    Returns:
        (moved image, truth) where truth is the (4, 4) LPS point transform from atlas points to moved-image
        points: what registering the moved image to the atlas must recover.
    """
    centre = atlas.t1.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in atlas.t1.GetSize()])
    truth = rigid_matrix(rotation_deg, shift_mm, centre)
    spacing = np.array([2.7, 2.7, 4.8])
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing)
    affine[:3, 3] = [-20.0, -260.0, -20.0]
    grid = make_grid(np.ceil(np.array([280.0, 280.0, 200.0]) / spacing).astype(int).tolist(), affine)
    values = sitk.GetArrayFromImage(resample(atlas.t1, grid, np.linalg.inv(truth)))
    noise = np.random.default_rng(seed).normal(0.0, 10.0, values.shape)
    moved = np.where(values > 0, 1000.0 - 0.8 * values + 0.0005 * values**2 + noise, 0.0).astype(np.float32)
    image = sitk.GetImageFromArray(moved)
    image.CopyInformation(grid)
    return image, truth


def transform_error_mm(atlas: Atlas, found: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Mean and max distance (mm) between ``found @ x`` and ``truth @ x`` over the atlas brain voxels ``x``."""
    ijk = np.argwhere(sitk.GetArrayFromImage(atlas.mask) > 0)[:, ::-1]
    points = index_affine_lps(atlas.mask) @ np.c_[ijk, np.ones(len(ijk))].T
    distance = np.linalg.norm((np.asarray(found) @ points - np.asarray(truth) @ points)[:3], axis=0)
    return float(distance.mean()), float(distance.max())


def transform_error_deg(found: np.ndarray, truth: np.ndarray) -> float:
    """Angle (degrees) of the residual rotation ``R_found^T R_truth`` (axis-angle: ``cos a = (trace - 1) / 2``)."""
    residual = np.asarray(found)[:3, :3].T @ np.asarray(truth)[:3, :3]
    return float(np.degrees(np.arccos(np.clip((np.trace(residual) - 1.0) / 2.0, -1.0, 1.0))))
