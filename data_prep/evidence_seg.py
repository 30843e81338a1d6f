"""The DICOM SEG of a case's evidence, for cases that ``data_prep`` prepared from a DICOM study (DESIGN §10).

``data_prep`` knows where a case came from (its case record) and how the model-input grid maps back to the
original scan (:func:`~data_prep.native_space.map_to_original`); :mod:`monai_protoshare.explain.dicom_seg` knows
how to write a SEG. :func:`case_seg_writer` joins the two as the ``dicom_seg`` factory that the evidence writers
take (the library never imports ``data_prep``). A bundle config passes it as::

    dicom_seg:
      _target_: data_prep.evidence_seg.case_seg_writer
      _mode_: callable

Example:
    >>> writer = case_seg_writer("prepared/case01/case01_t1ce.nii.gz")  # None unless the case came from DICOM
    >>> writer(nib.load("evidence/case01/evidence_label.nii.gz"), Path("evidence/case01"))
    PosixPath('evidence/case01/evidence_seg.dcm')
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib

from data_prep.brats_layout import case_record_path
from data_prep.native_space import load_case_record, map_to_original
from monai_protoshare.explain.dicom_seg import SEG_NAME, SegWriter, read_series, series_label_volume, write_evidence_seg

__all__ = ["case_seg_writer"]


def case_seg_writer(case_file: str | os.PathLike) -> SegWriter | None:
    """The SEG writer of the case one of whose sequence files is ``case_file``, when its T1-CE came from DICOM.

    Looks for the ``data_prep`` case record of the folder of ``case_file``. The writer maps the label overlay (on
    the model-input grid, SRI24 space) to the original T1-CE scan (nearest neighbour), samples it on the source
    instances and writes ``evidence_seg.dcm`` into the folder it is given: one saliency segment, or with
    ``segments`` (e.g. :data:`~monai_protoshare.explain.dicom_seg.BRATS_REGION_SEGMENTS` for a segmentation's BraTS
    labels) one segment per region.

    Returns:
        The writer, or ``None`` for NIfTI cases and cases without a record.
    """
    folder = Path(case_file).parent
    record_path = case_record_path(folder.parent, folder.name)
    if not record_path.is_file():
        return None
    record = load_case_record(record_path)
    source = record["sequences"]["t1ce"]["source"]
    if source.get("kind") != "dicom":
        return None

    def write(label_image: nib.Nifti1Image, out_dir: Path, segments=None) -> Path:
        original = map_to_original(label_image, record, sequence="t1ce", interpolation="nearest")
        datasets = read_series(source["files"])
        labels = series_label_volume(original, datasets, binary=segments is None)
        return write_evidence_seg(labels, datasets, Path(out_dir) / SEG_NAME, segments=segments)

    return write
