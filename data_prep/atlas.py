"""The SRI24 atlas in BraTS space, shipped at 1.5 mm, and the SRI24/BraTS output grids.

The files in ``data_prep/atlas/`` are derived by :mod:`data_prep.build_atlas` from the BraTS-space SRI24
T1 atlas (Rohlfing et al., Hum Brain Mapp 31(5):798-819, 2010; CC BY-SA 3.0, see ``atlas/NOTICE.md``).

BraTS-2020 volumes live on one 1 mm grid: 240 x 240 x 155 voxels, LPS origin (0, -239, 0), identity
direction (nibabel affine ``[[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0]]``). :func:`sri24_grid` gives
that grid at another spacing with the same field of view: ``round(n / s)`` voxels per axis and the
origin shifted by ``(s - 1) / 2`` mm so that the first voxel's outer edge stays where the 1 mm grid's is
(the convention of TorchIO's ``Resample``, which MProtoNet's preprocessing uses).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from data_prep.geometry import make_grid, resample

__all__ = [
    "ATLAS_DIR",
    "ATLAS_MASK_FILE",
    "ATLAS_SPACING",
    "ATLAS_T1_FILE",
    "BRATS_ORIGIN_LPS",
    "BRATS_SIZE",
    "Atlas",
    "load_atlas",
    "sri24_grid",
]

ATLAS_DIR = Path(__file__).resolve().parent / "atlas"
#: Skull-stripped SRI24 T1 (int16) on the 1.5 mm SRI24/BraTS grid.
ATLAS_T1_FILE = "sri24_t1_brain_1.5mm.nii.gz"
#: Brain mask (uint8 0/1) of the same atlas on the same grid.
ATLAS_MASK_FILE = "sri24_brain_mask_1.5mm.nii.gz"
ATLAS_SPACING = 1.5
BRATS_SIZE = (240, 240, 155)
BRATS_ORIGIN_LPS = (0.0, -239.0, 0.0)


@dataclass(frozen=True)
class Atlas:
    """The SRI24 T1 brain (float32) and its brain mask (uint8) on one SRI24 grid (LPS, SimpleITK)."""

    t1: sitk.Image
    mask: sitk.Image


def sri24_grid(spacing: float = 1.5) -> sitk.Image:
    """Return an all-zero uint8 image on the SRI24/BraTS grid at isotropic ``spacing`` millimetres.

    ``sri24_grid(1.0)`` is the BraTS-2020 grid (240, 240, 155); ``sri24_grid(1.5)`` is (160, 160, 103).

    Raises:
        ValueError: when ``spacing`` is not positive.
    """
    if not spacing > 0:
        raise ValueError(f"spacing must be a positive number of millimetres; received {spacing!r}")
    size = [int(round(n / spacing)) for n in BRATS_SIZE]
    affine = np.eye(4)
    affine[:3, :3] *= spacing
    affine[:3, 3] = np.asarray(BRATS_ORIGIN_LPS) + 0.5 * (spacing - 1.0)
    return make_grid(size, affine)


def load_atlas(spacing: float = ATLAS_SPACING, atlas_dir: str | Path = ATLAS_DIR) -> Atlas:
    """Load the shipped SRI24 atlas, resampled to ``spacing`` mm when that differs from 1.5 mm.

    Args:
        spacing: isotropic spacing of the returned grid (:func:`sri24_grid`). Tests use coarse
            spacings (e.g. 3 mm) to stay fast; registration uses the shipped 1.5 mm.
        atlas_dir: folder holding :data:`ATLAS_T1_FILE` and :data:`ATLAS_MASK_FILE`.

    Raises:
        FileNotFoundError: when an atlas file is missing (rebuild with ``python -m data_prep build-atlas``).
    """
    atlas_dir = Path(atlas_dir)
    paths = [atlas_dir / ATLAS_T1_FILE, atlas_dir / ATLAS_MASK_FILE]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(
                f"SRI24 atlas file {path} is missing; rebuild it with `python -m data_prep build-atlas`"
            )
    t1 = sitk.Cast(sitk.ReadImage(str(paths[0])), sitk.sitkFloat32)
    mask = sitk.Cast(sitk.ReadImage(str(paths[1])), sitk.sitkUInt8)
    if spacing != ATLAS_SPACING:
        grid = sri24_grid(spacing)
        t1 = resample(t1, grid)
        mask = resample(sitk.Cast(mask, sitk.sitkFloat32), grid) >= 0.5
    return Atlas(t1=t1, mask=sitk.Cast(mask, sitk.sitkUInt8))
