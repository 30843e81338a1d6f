"""DICOM SEG of the evidence overlay, referencing the source DICOM series (DESIGN §10, issue 7 item 4).

When a case came as DICOM, the radiologist's PACS viewer shows the evidence over the T1-CE series itself:
:func:`series_label_volume` samples a label volume given in world coordinates (a NIfTI image on the T1-CE's
original grid, e.g. the overlay mapped back by ``data_prep``) on the grid of the source instances, and
:func:`write_evidence_seg` writes a binary ``highdicom`` Segmentation whose frames reference those instances, in
their frame of reference and series. Which cases came from DICOM, and how their grid maps to the original scan,
only ``data_prep`` knows: the evidence writers take a :data:`SegWriterFactory` (``data_prep.evidence_seg``'s
``case_seg_writer``) instead of importing it. ``highdicom`` and ``pydicom`` are the ``dicom`` extra, imported
when a SEG is read or written.

Example:
    >>> datasets = read_series(t1ce_files)
    >>> labels = series_label_volume(nib.load("evidence_label.nii.gz"), datasets)  # (frames, rows, cols)
    >>> write_evidence_seg(labels, datasets, "evidence_seg.dcm")
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from .. import __version__
from ..io import atomic_path

if TYPE_CHECKING:
    from highdicom.seg import SegmentDescription
    from pydicom.dataset import Dataset

__all__ = [
    "BRATS_REGION_SEGMENTS",
    "SEG_NAME",
    "SegWriter",
    "SegWriterFactory",
    "frame_index_to_lps",
    "read_series",
    "series_label_volume",
    "write_evidence_seg",
]

SEG_NAME = "evidence_seg.dcm"
#: ``writer(label_image, folder, segments=None) -> path``: writes a case's DICOM SEG from its label image into
#: ``folder``: one saliency segment of the non-zero voxels, or the ``segments`` of :func:`write_evidence_seg`.
SegWriter = Callable[..., Path]
#: ``factory(case_file) -> writer or None``: the SEG writer of the case one of whose input files is ``case_file``,
#: ``None`` for a case that did not come from DICOM.
SegWriterFactory = Callable[[str | os.PathLike], SegWriter | None]
# nibabel/NIfTI world coordinates are RAS; DICOM's are LPS.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _dicom_extra(name: str) -> ModuleType:
    """Import ``name`` (a package of the ``dicom`` extra), naming the extra when it is missing."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ImportError(f"DICOM SEG needs {name.split('.')[0]}: pip install 'monai_protoshare[dicom]'") from err


def read_series(files: Sequence[str | os.PathLike]) -> list[Dataset]:
    """Read the DICOM files of one series (full datasets, pixel data included, as highdicom needs them).

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: the files belong to several series or none is given.
    """
    if not files:
        raise ValueError("files must list the DICOM files of the source series; received none.")
    pydicom = _dicom_extra("pydicom")
    datasets = []
    for path in files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"source DICOM file {path} not found.")
        datasets.append(pydicom.dcmread(path))
    series = {ds.SeriesInstanceUID for ds in datasets}
    if len(series) != 1:
        raise ValueError(f"files must belong to one series; received {len(series)} series: {sorted(series)}.")
    return datasets


def frame_index_to_lps(dataset: Dataset) -> np.ndarray:
    """4x4 matrix from (column, row, 0, 1) pixel indices of one single-frame instance to LPS millimetres."""
    orientation = np.asarray(dataset.ImageOrientationPatient, dtype=np.float64)
    row_spacing, column_spacing = (float(v) for v in dataset.PixelSpacing)
    along_row, along_column = orientation[:3], orientation[3:]
    matrix = np.eye(4)
    matrix[:3, 0] = along_row * column_spacing  # next column: one step along the row direction
    matrix[:3, 1] = along_column * row_spacing
    matrix[:3, 2] = np.cross(along_row, along_column)
    matrix[:3, 3] = np.asarray(dataset.ImagePositionPatient, dtype=np.float64)
    return matrix


def series_label_volume(image: nib.Nifti1Image, datasets: Sequence[Dataset], binary: bool = True) -> np.ndarray:
    """Sample a label image (nearest neighbour, in world coordinates) on the pixels of each source instance.

    Args:
        image: 3-D label volume with a correct affine (voxels outside it read 0).
        datasets: the single-frame instances of the source series, any order.
        binary: 1 where the label is non-zero (default); ``False`` keeps the label values (e.g. BraTS 1, 2, 4).

    Returns:
        (len(datasets), Rows, Columns) uint8; frame ``i`` lies on ``datasets[i]``.

    Raises:
        ValueError: when ``image`` is not 3-D or an instance has several frames.
    """
    labels = np.asarray(image.dataobj)
    if labels.ndim != 3:
        raise ValueError(f"image must be a 3-D label volume; received shape {labels.shape}.")
    world_to_voxel = np.linalg.inv(image.affine) @ _LPS_TO_RAS
    frames = []
    for ds in datasets:
        if int(getattr(ds, "NumberOfFrames", 1)) != 1:
            raise ValueError(f"instance {ds.SOPInstanceUID}: only single-frame source images are supported.")
        rows, columns = int(ds.Rows), int(ds.Columns)
        col, row = np.meshgrid(np.arange(columns), np.arange(rows))  # (rows, columns)
        pixels = np.stack([col.ravel(), row.ravel(), np.zeros(col.size), np.ones(col.size)])
        voxels = np.rint((world_to_voxel @ frame_index_to_lps(ds) @ pixels)[:3]).astype(np.int64)
        inside = np.all((voxels >= 0) & (voxels < np.asarray(labels.shape)[:, None]), axis=0)
        values = np.zeros(col.size, dtype=np.uint8)
        sampled = labels[voxels[0, inside], voxels[1, inside], voxels[2, inside]]
        values[inside] = sampled > 0 if binary else sampled
        frames.append(values.reshape(rows, columns))
    return np.stack(frames)


#: the BraTS regions as SEG segments of a BraTS label map (1 necrosis, 2 oedema, 4 enhancing): nested, so they overlap
BRATS_REGION_SEGMENTS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("Whole tumour", (1, 2, 4)),
    ("Tumour core", (1, 4)),
    ("Enhancing tumour", (4,)),
)


def _segment(number: int, segment_label: str, algorithm_name: str, tumour: bool) -> SegmentDescription:
    """A segment computed automatically by an AI algorithm: a saliency map (DCM 'Saliency'), or a tumour region
    (SCT 'Neoplasm', a morphologically abnormal structure)."""
    hd = _dicom_extra("highdicom")
    codes = _dicom_extra("pydicom.sr.codedict").codes
    category, kind = (
        (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm)
        if tumour
        else (codes.SCT.SpatialAndRelationalConcept, codes.DCM.Saliency)
    )
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=segment_label,
        segmented_property_category=category,
        segmented_property_type=kind,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm_name, family=codes.cid7162.ArtificialIntelligence, version=__version__
        ),
    )


def write_evidence_seg(
    labels: np.ndarray,
    source_datasets: Sequence[Dataset],
    path: str | os.PathLike,
    *,
    segment_label: str = "Prototype evidence",
    segments: Sequence[tuple[str, Sequence[int]]] | None = None,
    series_number: int = 9001,
    series_description: str = "UM-ProtoShare evidence",
    algorithm_name: str = "UM-ProtoShare",
) -> Path:
    """Write a binary DICOM Segmentation of ``labels`` referencing ``source_datasets`` (atomically).

    The SEG inherits the study, patient and frame of reference of the source series and references each source
    instance from its frames; viewers show it over the source series with no registration.

    Args:
        labels: (len(source_datasets), Rows, Columns), non-zero = evidence; frame ``i`` lies on
            ``source_datasets[i]`` (:func:`series_label_volume` gives this layout).
        source_datasets: the single-frame instances of the source series (the T1-CE).
        path: output file.
        segment_label: the segment's label (one saliency segment: ``labels`` non-zero).
        segments: instead, one tumour segment per ``(label, values)``: the pixels whose label is in ``values``
            (segments may overlap, e.g. :data:`BRATS_REGION_SEGMENTS` of a BraTS label map).
        series_number, series_description: of the new SEG series.
        algorithm_name: recorded in the segment's algorithm identification.

    Returns:
        ``path``.

    Raises:
        ValueError: when ``labels`` does not have one frame per source instance of their size.
    """
    hd = _dicom_extra("highdicom")
    labels = np.asarray(labels)
    expected = (len(source_datasets), int(source_datasets[0].Rows), int(source_datasets[0].Columns))
    if labels.shape != expected:
        raise ValueError(f"labels must be (frames, rows, columns) = {expected}; received {labels.shape}.")
    if segments:
        descriptions = [_segment(i + 1, name, algorithm_name, True) for i, (name, _) in enumerate(segments)]
        pixels = np.stack([np.isin(labels, list(values)) for _, values in segments], axis=-1).astype(np.uint8)
    else:
        descriptions, pixels = [_segment(1, segment_label, algorithm_name, False)], (labels > 0).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=list(source_datasets),
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(series_number),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="monai_protoshare",
        manufacturer_model_name=algorithm_name,
        software_versions=__version__,
        device_serial_number="0",
        series_description=series_description,
        # an empty overlay still gives a valid SEG (all frames kept) rather than an error
        omit_empty_frames=bool(pixels.any()),
    )
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return Path(path)
