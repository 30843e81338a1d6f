"""The BraTS-2020 output layout: case folders, file names and ``name_mapping.csv``.

::

    <out>/name_mapping.csv
    <out>/<subject>/<subject>_{t1,t1ce,t2,flair}.nii.gz     model input, SRI24 space
    <out>/<subject>/<subject>_data_prep.json               transforms and original geometry
    <out>/<subject>/native/<subject>_<sequence>.nii.gz     DICOM input only: dcm2niix volumes (+ .json)

A case folder appears only complete: it is written under a hidden temporary name in ``<out>`` and
renamed in one step (:func:`publish_case`). ``name_mapping.csv`` has the release's six columns; a clinical
case's grade is unknown and written as :data:`UNKNOWN_GRADE` (``NA``, the release's own missing-value
marker) unless the caller knows it. The csv is rewritten whole (atomically); two processes updating it at
the same moment could lose a row, so batch mode updates it from its main process only.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

from monai.utils import look_up_option

from monai_protoshare.data.brats import GRADE_COLUMN, ID_COLUMN, NAME_MAPPING, NAME_MAPPING_COLUMNS
from monai_protoshare.data.cases import GRADE_LABELS
from monai_protoshare.io import write_text

__all__ = [
    "GRADES",
    "NAME_MAPPING",
    "NAME_MAPPING_COLUMNS",
    "RECORD_SUFFIX",
    "UNKNOWN_GRADE",
    "case_record_path",
    "check_subject_id",
    "is_complete",
    "new_partial_dir",
    "publish_case",
    "remove_partial_dirs",
    "update_name_mapping",
]

#: Grade of a case whose histology is not known (the release marks missing values ``NA``).
UNKNOWN_GRADE = "NA"
GRADES = (*GRADE_LABELS, UNKNOWN_GRADE)
RECORD_SUFFIX = "_data_prep.json"
_PARTIAL_PREFIX = ".partial-"
_SUBJECT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_subject_id(subject: str) -> str:
    """Return ``subject`` when it is a safe folder name (letters, digits, ``._-``), else raise ValueError."""
    if not isinstance(subject, str) or not _SUBJECT_PATTERN.fullmatch(subject):
        raise ValueError(
            f"subject_id must be letters, digits, '.', '_' or '-' and start with a letter or digit; received {subject!r}"
        )
    return subject


def case_record_path(out_root: str | Path, subject: str) -> Path:
    """``<out>/<subject>/<subject>_data_prep.json``."""
    return Path(out_root) / subject / f"{subject}{RECORD_SUFFIX}"


def is_complete(out_root: str | Path, subject: str) -> bool:
    """Whether the case folder exists (it only ever appears complete) with its record."""
    return case_record_path(out_root, subject).is_file()


def new_partial_dir(out_root: str | Path, subject: str, overwrite: bool = False) -> Path:
    """Create and return a hidden working folder for one case inside ``out_root`` (same file system).

    Raises:
        FileExistsError: the case exists and ``overwrite`` is false (checked before any work is done).
    """
    if not overwrite and (Path(out_root) / subject).exists():
        raise FileExistsError(f"case folder {Path(out_root) / subject} exists; pass overwrite=True (--overwrite)")
    path = Path(out_root) / f"{_PARTIAL_PREFIX}{subject}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    return path


def publish_case(partial: Path, out_root: str | Path, subject: str, overwrite: bool = False) -> Path:
    """Rename the finished ``partial`` folder to ``<out>/<subject>`` in one step.

    Raises:
        FileExistsError: the case exists and ``overwrite`` is false.
    """
    final = Path(out_root) / subject
    if final.exists():
        if not overwrite:
            raise FileExistsError(f"case folder {final} exists; pass overwrite=True (--overwrite) to replace it")
        old = final.with_name(f"{_PARTIAL_PREFIX}{subject}-old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
        os.replace(partial, final)
        shutil.rmtree(old)
    else:
        os.replace(partial, final)
    return final


def remove_partial_dirs(out_root: str | Path) -> int:
    """Delete working folders left by interrupted runs; return how many."""
    out_root = Path(out_root)
    if not out_root.is_dir():
        return 0
    stale = [p for p in out_root.iterdir() if p.is_dir() and p.name.startswith(_PARTIAL_PREFIX)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return len(stale)


def update_name_mapping(out_root: str | Path, grades: Mapping[str, str]) -> Path:
    """Add or replace rows of ``<out>/name_mapping.csv`` (written atomically), keeping existing rows' order.

    Args:
        out_root: the output folder.
        grades: subject id -> ``HGG``, ``LGG`` or :data:`UNKNOWN_GRADE`.

    Returns:
        The csv path.
    """
    path = Path(out_root) / NAME_MAPPING
    rows: dict[str, dict[str, str]] = {}
    if path.is_file():
        for row in csv.DictReader(path.read_text(encoding="utf-8").splitlines()):
            rows[row[ID_COLUMN]] = {column: row.get(column) or "NA" for column in NAME_MAPPING_COLUMNS}
    for subject, grade in grades.items():
        row = {column: "NA" for column in NAME_MAPPING_COLUMNS}
        row[GRADE_COLUMN] = look_up_option(grade, GRADES)
        row[ID_COLUMN] = check_subject_id(subject)
        rows[subject] = row
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=NAME_MAPPING_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows.values())
    return write_text(path, buffer.getvalue())
