"""BraTS-2020 training data -> a validated MONAI datalist (DESIGN §3).

:func:`load_brats_datalist` reads ``name_mapping.csv`` and the case folders of the release (or of the
project's synthetic cohort, which has the same layout) and returns one item per subject, in csv row order::

    {"image": [t1, t1ce, t2, flair], "seg": seg, "label": 0 | 1, "subject_id": "BraTS20_Training_001"}

with absolute paths, channel order [T1, T1-CE, T2, FLAIR] and ``label`` 0 = LGG, 1 = HGG. It accepts
``.nii`` and ``.nii.gz``, the Kaggle copy's extra nesting
(``BraTS2020_TrainingData/MICCAI_BraTS2020_TrainingData/``) and case 355's segmentation file
``W39_1998.09.19_Segm.nii`` (any single ``*seg*.nii*`` file is taken when ``<id>_seg`` is missing).

Every case is validated in one pass, and every problem is reported at once (nnU-Net's
``verify_dataset_integrity`` does the same): missing, unreadable, truncated or non-NIfTI files, images that
are not 3-D, sequences and segmentation whose shapes or affines disagree, singular or non-finite affines,
NaN/Inf voxels, sequences whose voxels are all 0, segmentation labels outside {0, 1, 2, 4}, unknown grades,
duplicate ids, csv rows without a folder and folders without a row, and an empty, non-UTF-8 or incomplete
csv. Headers are checked first; voxel data (slow: 369 cases x 5 files) is then read in a thread pool, and
each file that passes is recorded in a small JSON cache keyed by (path, size, modification time), next to the
data or, when that folder is read-only, in the user cache folder, so a second call reads no voxels.
:func:`validate_datalist` applies the same file checks to a datalist that does not come from a BraTS folder
(a datalist JSON, a folder of case folders). This module reads the table and the folders; the file checks are
in :mod:`~monai_protoshare.data.nifti_checks`, the cache in :mod:`~monai_protoshare.data.brats_cache`, the
problem records in :mod:`~monai_protoshare.data.brats_records`.

Example:
    >>> from monai_protoshare.data.brats import load_brats_datalist
    >>> datalist = load_brats_datalist("MICCAI_BraTS2020_TrainingData")
    >>> datalist[0]["subject_id"], datalist[0]["label"]
    ('BraTS20_Training_001', 1)
"""

from __future__ import annotations

import csv
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_protoshare.data.brats_cache import CACHE_NAME, load_cache, save_cache
from monai_protoshare.data.brats_records import BratsDatasetError, BratsProblem, CaseFiles
from monai_protoshare.data.cases import GRADE_LABELS, NIFTI_SUFFIXES, SEQUENCES, sequence_file
from monai_protoshare.data.nifti_checks import SEG_LABELS, check_consistency, read_headers, read_voxels

# BratsProblem, BratsDatasetError, SEG_LABELS and CACHE_NAME live with the checks that use them
# (brats_records, nifti_checks, brats_cache); they are re-exported here, where callers import them from.
__all__ = [
    "CACHE_NAME",
    "NAME_MAPPING",
    "NAME_MAPPING_COLUMNS",
    "SEG_LABELS",
    "BratsDatasetError",
    "BratsProblem",
    "find_dataset_root",
    "load_brats_datalist",
    "validate_datalist",
]

logger = logging.getLogger(__name__)

#: Grades read as "unknown" when ``labelled=False`` (BraTS' own missing-value marker is NA).
UNKNOWN_GRADES = ("NA", "")
#: Name of the release's subject table.
NAME_MAPPING = "name_mapping.csv"
#: Header of the release's ``name_mapping.csv``.
NAME_MAPPING_COLUMNS = (
    "Grade",
    "BraTS_2017_subject_ID",
    "BraTS_2018_subject_ID",
    "TCGA_TCIA_subject_ID",
    "BraTS_2019_subject_ID",
    "BraTS_2020_subject_ID",
)
GRADE_COLUMN, ID_COLUMN = NAME_MAPPING_COLUMNS[0], NAME_MAPPING_COLUMNS[-1]
_COLUMNS = (GRADE_COLUMN, ID_COLUMN)  # the columns the reader needs (the release has six)
_SEARCH_DEPTH = 3  # levels below ``root`` searched for name_mapping.csv (the Kaggle copy needs 2)
_TABLE = "(table)"  # subject column of problems that concern the csv as a whole


def find_dataset_root(root: str | os.PathLike) -> Path:
    """Return the folder holding ``name_mapping.csv``: ``root`` itself or the shallowest match up to 3 levels below.

    Raises:
        FileNotFoundError: when ``root`` does not exist or holds no ``name_mapping.csv``.
        ValueError: when several folders at the same depth hold one.
    """
    root = Path(root).expanduser()
    expected = (
        f"a folder holding {NAME_MAPPING} and BraTS20_Training_NNN/ case folders (the MICCAI release), or the Kaggle"
        " copy's BraTS2020_TrainingData/MICCAI_BraTS2020_TrainingData/ nesting"
    )
    if not root.exists():
        raise FileNotFoundError(f"BraTS root {root} does not exist; expected {expected}.")
    if root.is_file():
        if root.name == NAME_MAPPING:
            return root.parent.resolve()
        raise FileNotFoundError(f"BraTS root {root} is a file; expected {expected}.")
    for depth in range(_SEARCH_DEPTH + 1):
        found = sorted(root.glob("/".join(["*"] * depth + [NAME_MAPPING])))
        if len(found) == 1:
            return found[0].parent.resolve()
        if len(found) > 1:
            raise ValueError(
                f"BraTS root {root} holds several {NAME_MAPPING} at the same depth: "
                f"{', '.join(str(p) for p in found)}; pass the folder of the one to use."
            )
    raise FileNotFoundError(f"No {NAME_MAPPING} in {root} or up to {_SEARCH_DEPTH} levels below; expected {expected}.")


def load_brats_datalist(
    root: str | os.PathLike,
    *,
    skip_bad: bool = False,
    mark_bad: bool = False,
    cache: bool = True,
    workers: int | None = None,
    labelled: bool = True,
) -> list[dict[str, Any]]:
    """Validate a BraTS-2020 training folder and return its MONAI datalist in ``name_mapping.csv`` row order.

    Args:
        root: the release folder, the Kaggle copy's top folder, or any folder with ``name_mapping.csv``
            at most 3 levels below.
        skip_bad: drop the cases with problems and log one warning listing them, instead of raising.
            Problems of the csv itself always raise.
        mark_bad: keep the cases with problems in the datalist, each with its problems under ``problems`` (a list of
            ``"file: problem"`` strings), and log one warning listing them, instead of raising: cross-validation
            folds then split over every subject as usual (evaluation skipping bad held-out cases). A case without
            a grade still raises (it has no fold); folders without a csv row are only logged.
        cache: read and update the validation cache (see the module docstring).
        workers: threads reading voxel data; default ``min(8, cpu_count)``.
        labelled: require a grade and a segmentation for every case (training and evaluation). With
            ``False`` (clinical cases from ``data_prep``, inference) a grade ``NA`` gives ``label`` None and a
            missing segmentation gives ``seg`` None; every other check still applies.

    Returns:
        One dict per subject: ``image`` (four absolute paths, T1, T1-CE, T2, FLAIR), ``seg`` (absolute path),
        ``label`` (0 LGG, 1 HGG) and ``subject_id``.

    Raises:
        FileNotFoundError: when ``root`` does not exist or holds no ``name_mapping.csv``.
        BratsDatasetError: (a ``ValueError``) listing every problem as subject / file / problem.
    """
    start = time.perf_counter()
    data_root = find_dataset_root(root)
    cases, table_problems = _read_table(data_root / NAME_MAPPING)
    if table_problems:
        raise BratsDatasetError(
            data_root, table_problems, f"Fix {NAME_MAPPING}: it needs columns {', '.join(_COLUMNS)}."
        )
    problems = _check_rows(cases, labelled) + _find_files(data_root, cases, labelled)
    problems += _orphan_folders(data_root, {c.subject for c in cases})
    cache_data = load_cache(data_root) if cache else {}
    infos, header_problems, to_read = read_headers(data_root, cases, cache_data, workers)
    problems += header_problems
    problems += read_voxels(to_read, infos, workers)
    problems += check_consistency(cases, infos)
    if cache:
        save_cache(data_root, cache_data, infos)

    if mark_bad:  # a case without a grade has no fold: it cannot be kept, marked or not
        no_grade = {c.subject for c in cases if labelled and c.label is None}
        _raise_or_skip(data_root, cases, [p for p in problems if p.subject in no_grade], skip_bad=False)
    bad = _raise_or_skip(data_root, cases, problems, skip_bad or mark_bad)
    kept = cases if mark_bad else [c for c in cases if c.subject not in bad]
    logger.info("BraTS datalist: %d case(s) from %s in %.1f s.", len(kept), data_root, time.perf_counter() - start)
    return _datalist_items(data_root, kept, problems)


def _datalist_items(data_root: Path, cases: list[CaseFiles], problems: list[BratsProblem]) -> list[dict[str, Any]]:
    """One datalist item per case, in order; a case with problems (``mark_bad``) lists them under ``problems``."""
    found: dict[str, list[str]] = {}
    for p in problems:
        found.setdefault(p.subject, []).append(f"{p.file}: {p.problem}")
    items = []
    for c in cases:
        item = {
            "image": [str(c.files.get(s, data_root / c.subject / f"{c.subject}_{s}.nii.gz")) for s in SEQUENCES],
            "seg": str(c.files["seg"]) if "seg" in c.files else None,
            "label": c.label,
            "subject_id": c.subject,
        }
        if c.subject in found:
            item["problems"] = sorted(found[c.subject])
        items.append(item)
    return items


def validate_datalist(
    datalist: Sequence[Mapping[str, Any]],
    source: str | os.PathLike = "datalist",
    *,
    skip_bad: bool = False,
    voxels: bool = True,
    workers: int | None = None,
) -> list[Mapping[str, Any]]:
    """The reader's file checks for a datalist that does not come from a BraTS folder.

    For a MONAI datalist JSON or a folder of case folders (inference), whose files no ``name_mapping.csv``
    vouches for. Each item needs ``subject_id`` and ``image`` (four paths [T1, T1-CE, T2, FLAIR]); a ``seg``
    path is checked when present. Every problem is found in one pass: missing, unreadable, truncated or
    non-NIfTI files, images that are not 3-D, singular or non-finite affines, files of one case whose shapes or
    affines disagree, NaN/Inf voxels, sequences whose voxels are all 0, segmentation labels outside
    {0, 1, 2, 4}, duplicate subject ids.

    Args:
        datalist: the items.
        source: where the datalist came from (named in the error).
        skip_bad: drop the items with problems and log one warning listing them, instead of raising.
        voxels: also read the voxel data (truncation, NaN/Inf, empty sequences, labels); ``False`` checks the
            headers alone (fast).
        workers: threads reading voxel data; default ``min(8, cpu_count)``.

    Returns:
        The good items, unchanged and in order.

    Raises:
        BratsDatasetError: listing every problem as subject / file / problem (with ``skip_bad``, only when no
            item is left).
    """
    cases, problems = [], []
    for position, item in enumerate(datalist):
        case = CaseFiles(str(item.get("subject_id") or f"(item {position + 1})"), position, "")
        cases.append(case)
        paths = item.get("image")
        if isinstance(paths, (str, bytes, os.PathLike)) or not isinstance(paths, Sequence) or len(paths) != 4:
            problem = f"expected four paths [T1, T1-CE, T2, FLAIR], got {paths!r}"
            problems.append(BratsProblem(case.subject, "image", problem))
            continue
        for kind, path in [*zip(SEQUENCES, paths), *([("seg", item["seg"])] if item.get("seg") else [])]:
            path = Path(str(path)).expanduser()
            if path.is_file():
                case.files[kind] = path.resolve()
            else:
                problems.append(BratsProblem(case.subject, path.name, f"missing {kind} file {path}"))
    for sid, count in Counter(c.subject for c in cases).items():
        if count > 1:
            problems.append(BratsProblem(sid, "subject_id", f"duplicate id ({count} items); expected unique ids"))
    infos, header_problems, to_read = read_headers(Path(os.sep), cases, {}, workers)
    problems += header_problems + (read_voxels(to_read, infos, workers) if voxels else [])
    problems += check_consistency(cases, infos)
    bad = _raise_or_skip(Path(source), cases, problems, skip_bad)
    return [item for item, case in zip(datalist, cases, strict=True) if case.subject not in bad]


def _raise_or_skip(root: Path, cases: list[CaseFiles], problems: list[BratsProblem], skip_bad: bool) -> set[str]:
    """Raise one :class:`BratsDatasetError` listing ``problems`` in case order, or with ``skip_bad`` log them in one
    warning; return the subjects with problems."""
    order: dict[str, int] = {}
    for case in cases:
        order.setdefault(case.subject, case.row)
    problems = sorted(set(problems), key=lambda p: (order.get(p.subject, 1 << 30), p.subject, p.file, p.problem))
    bad = {p.subject for p in problems}
    if problems and not skip_bad:
        raise BratsDatasetError(root, problems, "Fix or remove these cases, or pass skip_bad=True to drop them.")
    if problems:
        if not any(c.subject not in bad for c in cases):
            raise BratsDatasetError(root, problems, "No valid case is left after skipping the bad ones.")
        logger.warning(
            "Skipping %d bad case(s) of %s (subject | file | problem):\n%s",
            len({c.subject for c in cases} & bad),
            root,
            "\n".join(f"  {p}" for p in problems),
        )
    return bad


def _read_table(path: Path) -> tuple[list[CaseFiles], list[BratsProblem]]:
    """Parse name_mapping.csv into cases; returns problems of the table as a whole (nothing can be read past them)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        return [], [BratsProblem(_TABLE, path.name, f"not UTF-8 text ({err.reason} at byte {err.start})")]
    except OSError as err:
        return [], [BratsProblem(_TABLE, path.name, f"unreadable ({err.strerror or err})")]
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in reader.fieldnames or []]
    if not any(header):
        return [], [BratsProblem(_TABLE, path.name, "empty file; expected a header and one row per subject")]
    missing = [c for c in _COLUMNS if c not in header]
    if missing:
        found = ", ".join(header)
        return [], [BratsProblem(_TABLE, path.name, f"missing column(s) {', '.join(missing)}; header is {found}")]
    reader.fieldnames = header
    cases, problems = [], []
    for row in reader:
        grade, subject = (row.get(GRADE_COLUMN) or "").strip(), (row.get(ID_COLUMN) or "").strip()
        if not subject:
            problems.append(
                BratsProblem(_TABLE, path.name, f"line {reader.line_num}: empty {ID_COLUMN} ({len(row)} fields)")
            )
        else:
            cases.append(CaseFiles(subject, reader.line_num, grade))
    if not cases and not problems:
        problems.append(BratsProblem(_TABLE, path.name, "no subject rows; expected one row per subject"))
    return cases, problems


def _check_rows(cases: list[CaseFiles], labelled: bool = True) -> list[BratsProblem]:
    """Unknown grades (unless ``labelled`` is off and the grade is NA or empty) and duplicate ids."""
    problems, first_line = [], {}
    for case in cases:
        if case.label is None and (labelled or case.grade.upper() not in UNKNOWN_GRADES):
            problem = f"line {case.row}: unknown grade {case.grade!r}; expected one of {', '.join(GRADE_LABELS)}"
            problems.append(BratsProblem(case.subject, NAME_MAPPING, problem))
        if case.subject in first_line:
            problem = f"line {case.row}: duplicate id (also on line {first_line[case.subject]})"
            problems.append(BratsProblem(case.subject, NAME_MAPPING, problem))
        first_line.setdefault(case.subject, case.row)
    return problems


def _find_files(data_root: Path, cases: list[CaseFiles], labelled: bool = True) -> list[BratsProblem]:
    """Locate each case's five files (``.nii.gz`` or ``.nii``; the seg may have another name), filling ``files``."""
    problems = []
    for case in cases:
        folder = data_root / case.subject
        if not folder.is_dir():
            problem = f"listed on line {case.row} of {NAME_MAPPING} but the case folder is missing"
            problems.append(BratsProblem(case.subject, f"{case.subject}/", problem))
            continue
        for kind in (*SEQUENCES, "seg"):
            path = sequence_file(folder, case.subject, kind)
            if path is None and kind == "seg":  # e.g. case 355: W39_1998.09.19_Segm.nii
                expected = {f"{case.subject}_{s}{x}" for s in SEQUENCES for x in NIFTI_SUFFIXES}
                found = sorted(
                    p
                    for p in folder.iterdir()
                    if p.is_file() and p.name not in expected and _is_nifti(p) and re.search("seg", p.name, re.I)
                )
                if len(found) > 1:
                    names = ", ".join(p.name for p in found)
                    problems.append(BratsProblem(case.subject, f"{case.subject}_seg.nii.gz", f"ambiguous: {names}"))
                    continue
                path = found[0] if found else None
            if path is None and kind == "seg" and not labelled:
                continue
            if path is None:
                problems.append(
                    BratsProblem(case.subject, f"{case.subject}_{kind}.nii.gz", "missing file (.nii.gz or .nii)")
                )
            else:
                case.files[kind] = path.resolve()
    return problems


def _is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI_SUFFIXES)


def _orphan_folders(data_root: Path, subjects: set[str]) -> list[BratsProblem]:
    """Case folders (named BraTS* or holding NIfTI files) that have no row in the csv."""
    problems = []
    for folder in sorted(p for p in data_root.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))):
        if folder.name in subjects:
            continue
        if folder.name.startswith("BraTS") or any(_is_nifti(p) for p in folder.iterdir()):
            problems.append(
                BratsProblem(folder.name, f"{folder.name}/", f"case folder without a row in {NAME_MAPPING}")
            )
    return problems
