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
(a datalist JSON, a folder of case folders).

Example:
    >>> from monai_protoshare.data.brats import load_brats_datalist
    >>> datalist = load_brats_datalist("MICCAI_BraTS2020_TrainingData")
    >>> datalist[0]["subject_id"], datalist[0]["label"]
    ('BraTS20_Training_001', 1)
"""

from __future__ import annotations

import concurrent.futures
import csv
import hashlib
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm import tqdm

from monai_protoshare.data.cases import GRADE_LABELS, NIFTI_SUFFIXES, SEQUENCES, sequence_file
from monai_protoshare.io import write_json

__all__ = [
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
#: Labels of a BraTS segmentation: 0 background, 1 necrotic/non-enhancing core, 2 oedema, 4 enhancing.
SEG_LABELS = (0, 1, 2, 4)
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
CACHE_NAME = ".monai_protoshare_validation.json"
_CACHE_VERSION = 2  # 2: sequences whose voxels are all 0 are rejected
_SEARCH_DEPTH = 3  # levels below ``root`` searched for name_mapping.csv (the Kaggle copy needs 2)
_AFFINE_ATOL_MM = 1e-3
_TABLE = "(table)"  # subject column of problems that concern the csv as a whole


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

    def __init__(self, root: str | os.PathLike, problems: Iterable[BratsProblem], hint: str = ""):
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
class _FileInfo:
    """Header facts of one NIfTI file and whether its voxels passed (cached when they did)."""

    shape: tuple[int, ...]
    affine: np.ndarray
    voxels_ok: bool = False


@dataclass
class _Case:
    subject: str
    row: int  # line number in name_mapping.csv
    grade: str
    files: dict[str, Path] = field(default_factory=dict)  # "t1" ... "flair", "seg" -> path

    @property
    def label(self) -> int | None:
        return GRADE_LABELS.get(self.grade.upper())


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
    cache_data = _load_cache(data_root) if cache else {}
    infos, header_problems, to_read = _read_headers(data_root, cases, cache_data, workers)
    problems += header_problems
    problems += _read_voxels(to_read, infos, workers)
    problems += _check_consistency(cases, infos)
    if cache:
        _save_cache(data_root, cache_data, infos)

    if mark_bad:  # a case without a grade has no fold: it cannot be kept, marked or not
        no_grade = {c.subject for c in cases if labelled and c.label is None}
        _raise_or_skip(data_root, cases, [p for p in problems if p.subject in no_grade], skip_bad=False)
    bad = _raise_or_skip(data_root, cases, problems, skip_bad or mark_bad)
    kept = cases if mark_bad else [c for c in cases if c.subject not in bad]
    found: dict[str, list[str]] = {}
    for p in problems:
        found.setdefault(p.subject, []).append(f"{p.file}: {p.problem}")
    logger.info("BraTS datalist: %d case(s) from %s in %.1f s.", len(kept), data_root, time.perf_counter() - start)
    items = []
    for c in kept:
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
        case = _Case(str(item.get("subject_id") or f"(item {position + 1})"), position, "")
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
    infos, header_problems, to_read = _read_headers(Path(os.sep), cases, {}, workers)
    problems += header_problems + (_read_voxels(to_read, infos, workers) if voxels else [])
    problems += _check_consistency(cases, infos)
    bad = _raise_or_skip(Path(source), cases, problems, skip_bad)
    return [item for item, case in zip(datalist, cases, strict=True) if case.subject not in bad]


def _raise_or_skip(root: Path, cases: list[_Case], problems: list[BratsProblem], skip_bad: bool) -> set[str]:
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


def _read_table(path: Path) -> tuple[list[_Case], list[BratsProblem]]:
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
            cases.append(_Case(subject, reader.line_num, grade))
    if not cases and not problems:
        problems.append(BratsProblem(_TABLE, path.name, "no subject rows; expected one row per subject"))
    return cases, problems


def _check_rows(cases: list[_Case], labelled: bool = True) -> list[BratsProblem]:
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


def _find_files(data_root: Path, cases: list[_Case], labelled: bool = True) -> list[BratsProblem]:
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


def _read_headers(
    data_root: Path, cases: list[_Case], cache_data: dict[str, Any], workers: int | None
) -> tuple[dict[Path, _FileInfo], list[BratsProblem], list[tuple[str, str, Path]]]:
    """Header facts of every file (from the cache when size and mtime match); returns (infos, problems, to read)."""
    todo, infos, problems = [], {}, []
    files = {(c.subject, kind, path) for c in cases for kind, path in c.files.items()}
    for subject, kind, path in sorted(files, key=lambda f: str(f[2])):
        cached = cache_data.get(_cache_key(data_root, path))
        if cached is not None and cached.get("stat") == _stat(path):
            infos[path] = _FileInfo(tuple(cached["shape"]), np.asarray(cached["affine"]), voxels_ok=True)
        else:
            todo.append((subject, kind, path))
    to_read = []
    for (subject, kind, path), result in zip(
        todo, _map(_load_header, [t[2] for t in todo], workers, "headers"), strict=True
    ):
        if isinstance(result, str):
            problems.append(BratsProblem(subject, path.name, result))
            continue
        infos[path] = result
        to_read.append((subject, kind, path))
        problems += [BratsProblem(subject, path.name, p) for p in _header_problems(result)]
    return infos, problems, to_read


def _header_problems(info: _FileInfo) -> list[str]:
    """Problems of one file's header alone: not 3-D, non-finite or singular affine."""
    problems = [] if len(info.shape) == 3 else [f"expected a 3-D image, got shape {info.shape}"]
    if not np.all(np.isfinite(info.affine)):
        problems.append("non-finite affine")
    elif abs(np.linalg.det(info.affine[:3, :3])) < 1e-6:
        problems.append("singular affine (zero voxel volume)")
    return problems


def _load_header(path: Path) -> _FileInfo | str:
    try:
        image = nib.load(path)
        return _FileInfo(tuple(int(n) for n in image.shape), np.asarray(image.affine, dtype=np.float64))
    except Exception as err:  # noqa: BLE001 - any failure is reported as this file's problem
        return f"not a readable NIfTI file ({_describe(err).replace(str(path), path.name)})"


def _read_voxels(to_read: list[tuple[str, str, Path]], infos: dict[Path, _FileInfo], workers: int | None) -> list:
    """Read every voxel of the listed files (thread pool): truncation, NaN/Inf, segmentation labels."""
    problems = []
    jobs = [(kind, path) for _, kind, path in to_read]
    for (subject, _, path), result in zip(to_read, _map(_check_voxels, jobs, workers, "voxels"), strict=True):
        if result is None:
            infos[path].voxels_ok = True
        else:
            problems.append(BratsProblem(subject, path.name, result))
    return problems


def _check_voxels(job: tuple[str, Path]) -> str | None:
    kind, path = job
    try:
        data = np.asanyarray(nib.load(path).dataobj)
    except Exception as err:  # noqa: BLE001 - any failure is reported as this file's problem
        return f"unreadable voxel data ({_describe(err)})"
    if kind == "seg":
        bad = np.ones(data.shape, dtype=bool)
        for label in SEG_LABELS:
            bad &= data != label
        if bad.any():
            values = ", ".join(f"{v:g}" for v in np.unique(data[bad])[:8])
            return f"{int(bad.sum())} voxel(s) with labels {values} outside {{0, 1, 2, 4}}"
    else:
        if data.dtype.kind in "fc":
            n_bad = int(np.count_nonzero(~np.isfinite(data)))
            if n_bad:
                return f"{n_bad} NaN/Inf voxel(s)"
        if not data.any():  # an empty export: preprocessing would find no brain to crop and normalise
            return "all voxels are 0; expected an image of the brain"
    return None


def _describe(err: BaseException) -> str:
    """Short human description of a read failure."""
    if isinstance(err, EOFError):
        return "truncated: the compressed data ends early"
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _check_consistency(cases: list[_Case], infos: dict[Path, _FileInfo]) -> list[BratsProblem]:
    """A case's sequences and segmentation must share one shape and one affine (that of most of its files).

    Files whose own header is bad (reported already) are left out, so one broken file is reported once.
    """
    problems = []
    for case in cases:
        files = [p for p in case.files.values() if p in infos and not _header_problems(infos[p])]
        shapes = Counter(infos[p].shape for p in files)
        if len(shapes) > 1:
            common = shapes.most_common(1)[0][0]
            problems += [
                BratsProblem(
                    case.subject, p.name, f"shape {infos[p].shape} differs from the case's other files' {common}"
                )
                for p in files
                if infos[p].shape != common
            ]
        agree = [sum(_same_affine(infos[p], infos[q]) for q in files) for p in files]
        if files and min(agree) < len(files):
            ref = infos[files[int(np.argmax(agree))]]
            for p in files:
                if not _same_affine(infos[p], ref):
                    diff = float(np.max(np.abs(infos[p].affine - ref.affine)))
                    problem = f"affine differs from the case's other files' (by up to {diff:.3g} mm)"
                    problems.append(BratsProblem(case.subject, p.name, problem))
    return problems


def _same_affine(a: _FileInfo, b: _FileInfo) -> bool:
    return bool(np.allclose(a.affine, b.affine, rtol=0, atol=_AFFINE_ATOL_MM))


def _map(func, items: list, workers: int | None, what: str) -> list:
    """``func`` over ``items`` in a thread pool (nibabel's gzip reads release the GIL), with a progress bar."""
    if not items:
        return []
    workers = workers or min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(func, items)
        return list(tqdm(results, total=len(items), desc=f"BraTS {what}", disable=len(items) < 200, leave=False))


def _stat(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _cache_key(data_root: Path, path: Path) -> str:
    try:
        return path.relative_to(data_root).as_posix()
    except ValueError:
        return path.as_posix()


def _cache_paths(data_root: Path) -> list[Path]:
    """Cache next to the data first, then in the user cache folder (for read-only data)."""
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "monai_protoshare"
    digest = hashlib.sha256(str(data_root).encode()).hexdigest()[:16]
    return [data_root / CACHE_NAME, user_cache / "brats_validation" / f"{digest}.json"]


def _load_cache(data_root: Path) -> dict[str, Any]:
    for path in _cache_paths(data_root):
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if content.get("version") == _CACHE_VERSION and isinstance(content.get("files"), dict):
            return content["files"]
    return {}


def _save_cache(data_root: Path, old: dict[str, Any], infos: dict[Path, _FileInfo]) -> None:
    """Record the files whose voxels passed; a cache that cannot be written anywhere is only logged."""
    files = {
        _cache_key(data_root, path): {"stat": _stat(path), "shape": list(info.shape), "affine": info.affine.tolist()}
        for path, info in sorted(infos.items())
        if info.voxels_ok
    }
    if files == old:
        return
    for path in _cache_paths(data_root):
        try:
            write_json(path, {"version": _CACHE_VERSION, "files": files})
            return
        except OSError as err:
            logger.debug("Cannot write the BraTS validation cache %s: %s", path, err)
    logger.info("The BraTS validation cache could not be written; the next call will read every voxel again.")
