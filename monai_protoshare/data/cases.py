"""What a case is, defined once (DESIGN §3): the class names, the sequence names and where a case's files are.

Classes: ``LGG = 0``, ``HGG = 1``. Channels: ``[T1, T1-CE, T2, FLAIR]``, the files of a case being named
``<case>_<sequence>.nii.gz`` (or ``.nii``) as in BraTS-2020 and in ``data_prep``'s output. The BraTS reader,
the inference datalist, ``data_prep`` and the Deploy and Label apps all read these names and find files
with these functions. Light on purpose (no torch, no MONAI), so every one of them can import it.

Example:
    >>> from monai_protoshare.data.cases import CLASS_NAMES, SEQUENCES, sequence_files
    >>> CLASS_NAMES, SEQUENCES
    (('LGG', 'HGG'), ('t1', 't1ce', 't2', 'flair'))
    >>> {s: [p.name for p in paths] for s, paths in sequence_files("BraTS20_Training_001").items()}["t1ce"]
    ['BraTS20_Training_001_t1ce.nii.gz']
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = [
    "CLASS_NAMES",
    "GRADE_LABELS",
    "NIFTI_SUFFIXES",
    "SEQUENCES",
    "SEQUENCE_NAMES",
    "case_files",
    "sequence_file",
    "sequence_files",
]

#: File suffixes of the four sequences, in the channel order of DESIGN §3 ([T1, T1-CE, T2, FLAIR]).
SEQUENCES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
#: Display names of the sequences, same order (figures, reports).
SEQUENCE_NAMES: tuple[str, ...] = ("T1", "T1-CE", "T2", "FLAIR")
#: Grade -> class label (DESIGN §3).
GRADE_LABELS: dict[str, int] = {"LGG": 0, "HGG": 1}
#: Class names in label order (``CLASS_NAMES[label]``).
CLASS_NAMES: tuple[str, ...] = tuple(sorted(GRADE_LABELS, key=GRADE_LABELS.__getitem__))
#: Accepted NIfTI file endings, the preferred one first.
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
_CASE_FILE = re.compile(rf"^(?P<case>.+)_(?P<sequence>{'|'.join(SEQUENCES)})(?P<ext>\.nii\.gz|\.nii)$")


def sequence_file(folder: str | os.PathLike, case: str, kind: str) -> Path | None:
    """``<folder>/<case>_<kind>.nii.gz``, else ``.nii``, whichever exists first; ``None`` when neither does.

    ``kind`` is a sequence name or ``"seg"``.
    """
    return next((p for p in (Path(folder) / f"{case}_{kind}{s}" for s in NIFTI_SUFFIXES) if p.is_file()), None)


def sequence_files(folder: str | os.PathLike) -> dict[str, list[Path]]:
    """The files ``*_<sequence>.nii[.gz]`` directly in ``folder``, per sequence (every sequence a key, in channel
    order; the paths sorted by name; an empty list when the sequence has no file)."""
    found: dict[str, list[Path]] = {sequence: [] for sequence in SEQUENCES}
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        match = _CASE_FILE.match(path.name)
        if match is not None:
            found[match["sequence"]].append(path)
    return found


def case_files(image: str | os.PathLike) -> tuple[str, list[str]]:
    """The case id and its four sequence files [T1, T1-CE, T2, FLAIR], from the path of any one of them.

    Raises:
        ValueError: the file name is not ``<case>_{t1,t1ce,t2,flair}.nii[.gz]``.
        FileNotFoundError: a sequence of the case is missing beside it.
    """
    path = Path(image)
    match = _CASE_FILE.match(path.name)
    if match is None:
        raise ValueError(
            f"image {path.name!r} must be named <case>_{{{','.join(SEQUENCES)}}}.nii[.gz] (the four sequences of a "
            "case side by side in one folder)."
        )
    case, files = match["case"], []
    for sequence in SEQUENCES:
        found = sequence_file(path.parent, case, sequence)
        if found is None:
            expected = f"{case}_{sequence}{NIFTI_SUFFIXES[0]}"
            raise FileNotFoundError(f"case {case!r}: no {sequence} sequence {expected} beside {path.name}.")
        files.append(str(found))
    return case, files
