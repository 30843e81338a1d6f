"""Records of BraTS folder validation (DESIGN §3): a problem, the error listing every problem, a case, a file.

Shared by the table reader (:mod:`monai_protoshare.data.brats`), the NIfTI file checks
(:mod:`monai_protoshare.data.nifti_checks`) and the validation cache (:mod:`monai_protoshare.data.brats_cache`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from monai_protoshare.data.cases import GRADE_LABELS

__all__ = ["BratsDatasetError", "BratsProblem", "CaseFiles", "FileInfo"]


@dataclass(frozen=True)
class BratsProblem:
    """One problem found while validating a BraTS folder.

    Attributes:
        subject: subject id (``BraTS20_Training_NNN``), or ``"(table)"`` for the csv as a whole.
        file: file or folder name the problem is about.
        problem: what is wrong, with the expected and the received value.
    """

    subject: str
    file: str
    problem: str

    def __str__(self) -> str:
        return f"{self.subject} | {self.file} | {self.problem}"


class BratsDatasetError(ValueError):
    """Every problem of a BraTS folder, raised once; ``problems`` lists them as :class:`BratsProblem`."""

    def __init__(self, root: str | os.PathLike, problems: Iterable[BratsProblem], hint: str = "") -> None:
        self.root = Path(root)
        self.problems = list(problems)
        subjects = {p.subject for p in self.problems}
        lines = [
            f"BraTS dataset at {self.root}: {len(self.problems)} problem(s) in {len(subjects)} subject(s)"
            " (subject | file | problem):",
            *(f"  {p}" for p in self.problems),
        ]
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


@dataclass
class FileInfo:
    """Header facts of one NIfTI file and whether its voxels passed (cached when they did)."""

    shape: tuple[int, ...]
    affine: np.ndarray
    voxels_ok: bool = False


@dataclass
class CaseFiles:
    """One subject: its id, its csv line (or datalist position), its grade and its files by kind."""

    subject: str
    row: int  # line number in name_mapping.csv
    grade: str
    files: dict[str, Path] = field(default_factory=dict)  # "t1" ... "flair", "seg" -> path

    @property
    def label(self) -> int | None:
        return GRADE_LABELS.get(self.grade.upper())
