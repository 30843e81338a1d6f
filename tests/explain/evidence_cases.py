"""Tiny NIfTI cases on an oblique, anisotropic grid for the evidence export tests."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy.spatial.transform import Rotation

from monai_protoshare.data.transforms import eval_transforms, inference_transforms
from monai_protoshare.networks import build_network
from tests.toy_data import TINY_NET

NATIVE_SHAPE = (30, 26, 14)
NATIVE_SPACING = (1.2, 1.7, 3.1)
NETWORK_GRID = (16, 16, 8)
PIXDIM = 3.0
SEQUENCES = ("t1", "t1ce", "t2", "flair")


def oblique_affine(shift: tuple[float, float, float] = (-20.0, 15.0, 7.0)) -> np.ndarray:
    """A RAS affine rotated about all three axes with anisotropic voxels (mm)."""
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", [20, -10, 30], degrees=True).as_matrix() @ np.diag(NATIVE_SPACING)
    affine[:3, 3] = shift
    return affine


def write_case(folder: Path, subject: str, label: int, seed: int = 0, qform_code: int = 1, sform_code: int = 2) -> dict:
    """Four sequences and a segmentation of a brain-like box with a bright lesion, as a datalist item."""
    rng = np.random.default_rng(seed)
    affine = oblique_affine()
    brain = np.zeros(NATIVE_SHAPE, dtype=bool)
    brain[3:27, 3:23, 2:12] = True
    seg = np.zeros(NATIVE_SHAPE, dtype=np.uint8)
    seg[8:16, 8:15, 4:8] = 2
    case_dir = folder / subject
    case_dir.mkdir(parents=True, exist_ok=True)
    item = {"image": [], "label": label, "subject_id": subject}
    for m, sequence in enumerate(SEQUENCES):
        data = np.where(brain, 1.0 + rng.random(NATIVE_SHAPE), 0.0) + (seg > 0) * (1.0 + m)
        path = case_dir / f"{subject}_{sequence}.nii.gz"
        _save(data.astype(np.float32), affine, path, qform_code, sform_code)
        item["image"].append(str(path))
    item["seg"] = str(case_dir / f"{subject}_seg.nii.gz")
    _save(seg, affine, Path(item["seg"]), qform_code, sform_code)
    return item


def _save(data: np.ndarray, affine: np.ndarray, path: Path, qform_code: int, sform_code: int) -> None:
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=qform_code)
    image.set_sform(affine, code=sform_code)
    nib.save(image, path)


def tiny_network(seed: int = 0):
    torch.manual_seed(seed)
    return build_network("um_protoshare", **TINY_NET).eval()


def image_transform():
    return inference_transforms(NETWORK_GRID, PIXDIM)


def labelled_transform():
    return eval_transforms(NETWORK_GRID, PIXDIM, with_seg=True)
