"""Image geometry in one convention: SimpleITK images (LPS physical millimetres) and 4x4 matrices.

SimpleITK/ITK and DICOM use LPS physical coordinates (x to the patient's Left, y to Posterior, z to
Superior); nibabel/NIfTI affines use RAS. Everything in ``data_prep`` computes in LPS and converts to a
RAS affine only when a nibabel image is written or read: ``affine_ras = diag(-1, -1, 1, 1) @ affine_lps``.

A 4x4 *index affine* maps a voxel index ``(i, j, k, 1)`` (ITK order: ``i`` along the first image axis)
to a physical point; a 4x4 *point transform* maps a physical point to a physical point. Rigid
registration results are point transforms in the ITK resampling convention: they map a point of the
fixed (output) space to the corresponding point of the moving (original) image.
"""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np
import SimpleITK as sitk

__all__ = [
    "LPS_TO_RAS",
    "index_affine_lps",
    "make_grid",
    "nibabel_to_sitk",
    "resample",
    "sitk_to_nibabel",
    "transform_from_matrix",
    "matrix_from_transform",
]

#: Converts LPS points/affines to RAS (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def index_affine_lps(image: sitk.Image) -> np.ndarray:
    """Return the 4x4 affine mapping ITK voxel indices ``(i, j, k)`` of ``image`` to LPS millimetres."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=float)[None, :]
    affine[:3, 3] = image.GetOrigin()
    return affine


def make_grid(size: Sequence[int], index_affine: np.ndarray, pixel_id: int = sitk.sitkUInt8) -> sitk.Image:
    """Return an all-zero image with ``size`` (ITK order) whose voxel-to-LPS affine is ``index_affine``.

    Raises:
        ValueError: when ``index_affine`` has shear (its columns are not orthogonal): SimpleITK grids are
            rotation x spacing only.
    """
    index_affine = np.asarray(index_affine, dtype=float)
    spacing = np.linalg.norm(index_affine[:3, :3], axis=0)
    direction = index_affine[:3, :3] / spacing[None, :]
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise ValueError(f"index_affine must be rotation x spacing without shear; received\n{index_affine}")
    grid = sitk.Image([int(s) for s in size], pixel_id)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin(index_affine[:3, 3].tolist())
    return grid


def sitk_to_nibabel(image: sitk.Image) -> nib.Nifti1Image:
    """Convert a 3-D SimpleITK image to a nibabel image (array axes i, j, k; RAS affine; qform = sform)."""
    array = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))
    affine = LPS_TO_RAS @ index_affine_lps(image)
    out = nib.Nifti1Image(array, affine)
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    return out


def nibabel_to_sitk(image: nib.spatialimages.SpatialImage, dtype: type = np.float32) -> sitk.Image:
    """Convert a 3-D nibabel image (any orientation) to a SimpleITK image with the same physical grid.

    Raises:
        ValueError: when the image is not 3-D (a trailing axis of length 1 is dropped).
    """
    array = np.asarray(image.dataobj, dtype=dtype)
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise ValueError(f"image must be 3-D (X, Y, Z); received shape {array.shape}")
    out = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    out.CopyInformation(make_grid(array.shape, LPS_TO_RAS @ image.affine))
    return out


def transform_from_matrix(matrix: np.ndarray) -> sitk.AffineTransform:
    """Return the SimpleITK transform of a 4x4 LPS point transform."""
    matrix = np.asarray(matrix, dtype=float)
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(matrix[:3, :3].ravel().tolist())
    transform.SetTranslation(matrix[:3, 3].tolist())
    return transform


def matrix_from_transform(transform: sitk.Transform) -> np.ndarray:
    """Return the 4x4 LPS point transform of a linear SimpleITK transform (centre folded into the shift)."""
    # Evaluate the transform at the origin and the unit vectors: exact for any linear transform.
    origin = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    columns = [np.asarray(transform.TransformPoint(tuple(e))) - origin for e in np.eye(3)]
    matrix = np.eye(4)
    matrix[:3, :3] = np.stack(columns, axis=1)
    matrix[:3, 3] = origin
    return matrix


def resample(
    image: sitk.Image, reference: sitk.Image, matrix: np.ndarray | None = None, interpolator: int = sitk.sitkLinear
) -> sitk.Image:
    """Resample ``image`` onto the grid of ``reference`` through the LPS point transform ``matrix``.

    Args:
        image: the moving image.
        reference: the output grid (only its geometry is used).
        matrix: 4x4 point transform mapping reference points to ``image`` points; identity when ``None``.
        interpolator: a SimpleITK interpolator (``sitk.sitkLinear`` for images, ``sitk.sitkNearestNeighbor``
            for masks).

    Returns:
        ``image`` resampled on the reference grid, float32 for linear interpolation; 0 outside ``image``.
    """
    transform = transform_from_matrix(np.eye(4) if matrix is None else matrix)
    pixel_id = sitk.sitkFloat32 if interpolator != sitk.sitkNearestNeighbor else image.GetPixelID()
    return sitk.Resample(image, reference, transform, interpolator, 0.0, pixel_id)
