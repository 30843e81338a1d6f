"""Tiny NIfTI cases on an oblique, anisotropic grid for the evidence export tests."""

from __future__ import annotations

import json
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


def write_dicom_case(data_dir: Path, dicom_dir: Path, subject: str = "caseD") -> tuple[dict, str, list[Path]]:
    """A case whose T1-CE was "prepared from DICOM": its NIfTI files (label 1), a DICOM series of its T1-CE and the
    data_prep case record mapping the output grid to that series (identity registration: the grid is the
    scan's own). Returns the case's datalist item, the series UID and the series' files."""
    import SimpleITK as sitk

    from data_prep.brats_layout import case_record_path
    from data_prep.dicom_study_writer import SeriesSpec, write_dicom_study
    from data_prep.geometry import index_affine_lps
    from data_prep.pipeline import RECORD_FORMAT

    item = write_case(data_dir, subject, label=1)
    t1ce = sitk.ReadImage(item["image"][1])
    [(series_uid, paths)] = write_dicom_study([SeriesSpec(t1ce * 100.0, "AX T1 MPRAGE POST")], dicom_dir).items()
    original = {"shape": list(t1ce.GetSize()), "affine_lps": index_affine_lps(t1ce).tolist()}
    record = {
        "format": RECORD_FORMAT,
        "subject_id": subject,
        "output": {"shape": original["shape"], "affine_lps": original["affine_lps"]},
        "sequences": {
            "t1ce": {
                "source": {"kind": "dicom", "files": [str(p) for p in paths]},
                "original": original,
                "output_to_original_lps": np.eye(4).tolist(),
            }
        },
    }
    case_record_path(data_dir, subject).write_text(json.dumps(record))
    return item, series_uid, list(paths)
