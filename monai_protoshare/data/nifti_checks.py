"""File checks of a case's NIfTI files (DESIGN §3): headers, voxels, and agreement between a case's files.

Headers first (readable, 3-D, finite non-singular affine), then every voxel of the files that passed, in a
thread pool (truncation, NaN/Inf, sequences that are all 0, segmentation labels outside :data:`SEG_LABELS`),
then shape and affine agreement within each case. Problems are returned as
:class:`~monai_protoshare.data.brats_records.BratsProblem`, never raised: the callers
(:func:`~monai_protoshare.data.brats.load_brats_datalist`, :func:`~monai_protoshare.data.brats.validate_datalist`)
report them all at once.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm import tqdm

from monai_protoshare.data.brats_cache import cache_key, file_stat
from monai_protoshare.data.brats_records import BratsProblem, CaseFiles, FileInfo

__all__ = ["SEG_LABELS", "check_consistency", "check_voxels", "header_problems", "read_headers", "read_voxels"]

#: Labels of a BraTS segmentation: 0 background, 1 necrotic/non-enhancing core, 2 oedema, 4 enhancing.
SEG_LABELS = (0, 1, 2, 4)
_AFFINE_ATOL_MM = 1e-3


def read_headers(
    data_root: Path, cases: list[CaseFiles], cache_data: dict[str, Any], workers: int | None
) -> tuple[dict[Path, FileInfo], list[BratsProblem], list[tuple[str, str, Path]]]:
    """Header facts of every file (from the cache when size and mtime match); returns (infos, problems, to read)."""
    todo, infos, problems = [], {}, []
    files = {(c.subject, kind, path) for c in cases for kind, path in c.files.items()}
    for subject, kind, path in sorted(files, key=lambda f: str(f[2])):
        cached = cache_data.get(cache_key(data_root, path))
        if cached is not None and cached.get("stat") == file_stat(path):
            infos[path] = FileInfo(tuple(cached["shape"]), np.asarray(cached["affine"]), voxels_ok=True)
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
        problems += [BratsProblem(subject, path.name, p) for p in header_problems(result)]
    return infos, problems, to_read


def header_problems(info: FileInfo) -> list[str]:
    """Problems of one file's header alone: not 3-D, non-finite or singular affine."""
    problems = [] if len(info.shape) == 3 else [f"expected a 3-D image, got shape {info.shape}"]
    if not np.all(np.isfinite(info.affine)):
        problems.append("non-finite affine")
    elif abs(np.linalg.det(info.affine[:3, :3])) < 1e-6:
        problems.append("singular affine (zero voxel volume)")
    return problems


def _load_header(path: Path) -> FileInfo | str:
    """The header facts of ``path``, or the problem that kept it from being read."""
    try:
        image = nib.load(path)
        return FileInfo(tuple(int(n) for n in image.shape), np.asarray(image.affine, dtype=np.float64))
    except Exception as err:  # noqa: BLE001 - any failure is reported as this file's problem
        return f"not a readable NIfTI file ({_describe(err).replace(str(path), path.name)})"


def read_voxels(
    to_read: list[tuple[str, str, Path]], infos: dict[Path, FileInfo], workers: int | None
) -> list[BratsProblem]:
    """Read every voxel of the listed files (thread pool): truncation, NaN/Inf, segmentation labels."""
    problems = []
    jobs = [(kind, path) for _, kind, path in to_read]
    for (subject, _, path), result in zip(to_read, _map(check_voxels, jobs, workers, "voxels"), strict=True):
        if result is None:
            infos[path].voxels_ok = True
        else:
            problems.append(BratsProblem(subject, path.name, result))
    return problems


def check_voxels(job: tuple[str, Path]) -> str | None:
    """The problem of one file's voxels (``job`` = (kind, path), kind "seg" or a sequence), or ``None``."""
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


def check_consistency(cases: list[CaseFiles], infos: dict[Path, FileInfo]) -> list[BratsProblem]:
    """A case's sequences and segmentation must share one shape and one affine (that of most of its files).

    Files whose own header is bad (reported already) are left out, so one broken file is reported once.
    """
    problems = []
    for case in cases:
        files = [p for p in case.files.values() if p in infos and not header_problems(infos[p])]
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


def _same_affine(a: FileInfo, b: FileInfo) -> bool:
    """Affines equal to within :data:`_AFFINE_ATOL_MM` millimetres."""
    return bool(np.allclose(a.affine, b.affine, rtol=0, atol=_AFFINE_ATOL_MM))


def _map(func: Callable[[Any], Any], items: list, workers: int | None, what: str) -> list:
    """``func`` over ``items`` in a thread pool (nibabel's gzip reads release the GIL), with a progress bar."""
    if not items:
        return []
    workers = workers or min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(func, items)
        return list(tqdm(results, total=len(items), desc=f"BraTS {what}", disable=len(items) < 200, leave=False))
