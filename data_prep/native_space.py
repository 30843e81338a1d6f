"""Map volumes from the output (SRI24) space back to a sequence's original scan, using the case record.

The evidence export (``monai_protoshare.explain``) first inverts the model's preprocessing (crop, 1.5 mm)
to the ``data_prep`` output grid, then calls :func:`map_to_original` to land on the patient's own scan:
the T1-CE series (or any other sequence) exactly as the scanner (DICOM) or the input NIfTI defined it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from monai.utils import look_up_option

from data_prep.brats_layout import RECORD_SUFFIX
from data_prep.geometry import make_grid, nibabel_to_sitk, resample, sitk_to_nibabel
from data_prep.pipeline import RECORD_FORMAT
from monai_protoshare.data.cases import SEQUENCES

__all__ = ["INTERPOLATIONS", "load_case_record", "map_to_original"]

INTERPOLATIONS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}


def load_case_record(case: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Return a case record: from a dict, a ``*_data_prep.json`` file or a case folder.

    Raises:
        FileNotFoundError: no record at the path.
        ValueError: the file is not a ``data_prep`` case record.
    """
    if isinstance(case, Mapping):
        record = dict(case)
    else:
        path = Path(case)
        if path.is_dir():
            path = path / f"{path.name}{RECORD_SUFFIX}"
        if not path.is_file():
            raise FileNotFoundError(f"case record {path} does not exist")
        record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("format") != RECORD_FORMAT:
        raise ValueError(f"case record format must be {RECORD_FORMAT!r}; received {record.get('format')!r}")
    return record


def map_to_original(
    volume_in_output_space: np.ndarray | nib.spatialimages.SpatialImage,
    case_json: str | os.PathLike | Mapping[str, Any],
    sequence: str = "t1ce",
    interpolation: str = "linear",
) -> nib.Nifti1Image:
    """Resample a volume in output (SRI24) space onto the original grid of one sequence.

    Args:
        volume_in_output_space: a (H, W, D) array on the record's output grid (``record["output"]``), or a
            nibabel image anywhere in SRI24 space (its own affine is used, e.g. a 1 mm or cropped grid).
        case_json: the case record, its path, or the case folder.
        sequence: ``t1``, ``t1ce``, ``t2`` or ``flair``: whose original scan to map to.
        interpolation: ``"linear"`` for maps, ``"nearest"`` for label volumes.

    Returns:
        A nibabel image with the original scan's shape and affine (qform = sform, code 1); float32 for linear
        interpolation, the input dtype for nearest; 0 outside the output field of view.

    Raises:
        ValueError: an array whose shape differs from the record's output shape, or a non-3-D volume.

    Example:
        >>> record = load_case_record("out/CASE001")
        >>> evidence = np.zeros(record["output"]["shape"], dtype=np.float32)
        >>> native = map_to_original(evidence, record, sequence="t1ce")
        >>> native.shape == tuple(record["sequences"]["t1ce"]["original"]["shape"])
        True
    """
    record = load_case_record(case_json)
    sequence = look_up_option(sequence, SEQUENCES)
    interpolator = look_up_option(interpolation, INTERPOLATIONS)
    if isinstance(volume_in_output_space, nib.spatialimages.SpatialImage):
        dtype = np.float32 if interpolation == "linear" else volume_in_output_space.get_data_dtype()
        source = nibabel_to_sitk(volume_in_output_space, dtype=dtype)
    else:
        array = np.asarray(volume_in_output_space)
        expected = tuple(record["output"]["shape"])
        if array.shape != expected:
            raise ValueError(
                f"volume_in_output_space must have the output shape {expected} of case "
                f"{record.get('subject_id')!r} (or be a nibabel image); received shape {array.shape}"
            )
        if interpolation == "linear":
            array = array.astype(np.float32)
        source = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
        source.CopyInformation(make_grid(expected, np.asarray(record["output"]["affine_lps"])))
    original = record["sequences"][sequence]["original"]
    reference = make_grid(original["shape"], np.asarray(original["affine_lps"]))
    to_original = np.asarray(record["sequences"][sequence]["output_to_original_lps"])
    # Resampling needs original -> output points: the inverse of the stored output -> original transform.
    mapped = resample(source, reference, np.linalg.inv(to_original), interpolator)
    return sitk_to_nibabel(mapped)
