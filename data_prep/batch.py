"""Batch mode: many studies in parallel worker processes, a progress bar, and a summary of failures.

One bad study never stops the batch: its error is recorded and the others go on; a worker process that
dies (a crash inside a native library) is replaced, and the cases it may have held are retried one at
a time in fresh processes so the culprit is named. Cases appear only complete (see
:mod:`data_prep.brats_layout`); a resumed batch skips the finished ones and deletes working folders left
by an interrupted run. At the end ``name_mapping.csv`` lists every finished case and
``data_prep_failures.json`` the failures (written atomically).

Cases come from a study root (each sub-folder is one DICOM study, named after it) or a manifest csv
with columns ``subject_id`` and either ``dicom`` or ``t1, t1ce, t2, flair``, optionally ``grade`` and
``<sequence>_series`` overrides; relative paths are relative to the csv.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import io
import logging
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from data_prep.brats_layout import (
    UNKNOWN_GRADE,
    check_subject_id,
    is_complete,
    remove_partial_dirs,
    update_name_mapping,
)
from data_prep.pipeline import PrepOptions, prepare_dicom_study, prepare_nifti_case
from monai_protoshare.data.cases import SEQUENCES
from monai_protoshare.io import write_json

__all__ = ["FAILURES_FILE", "BatchSummary", "CaseSpec", "cases_from_manifest", "cases_from_study_root", "run_batch"]

logger = logging.getLogger(__name__)

FAILURES_FILE = "data_prep_failures.json"
#: Errors that describe a bad input (their message is enough); anything else is reported with its traceback.
_EXPECTED_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, ImportError)


@dataclass(frozen=True)
class CaseSpec:
    """One case of a batch: a DICOM study folder or four NIfTI files.

    Attributes:
        subject_id: output case id.
        dicom: the study folder (DICOM input), or ``None``.
        nifti: ``{"t1": ..., "t1ce": ..., "t2": ..., "flair": ...}`` (NIfTI input), or ``None``.
        grade: ``HGG``, ``LGG`` or ``NA`` (unknown) for ``name_mapping.csv``.
        overrides: sequence -> series (DICOM input only).
    """

    subject_id: str
    dicom: Path | None = None
    nifti: dict[str, Path] | None = None
    grade: str = UNKNOWN_GRADE
    overrides: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_subject_id(self.subject_id)
        if (self.dicom is None) == (self.nifti is None):
            raise ValueError(f"{self.subject_id}: give exactly one of dicom (a folder) or nifti (four files)")


@dataclass
class BatchSummary:
    """Outcome of :func:`run_batch`: subject ids done now, skipped (already finished) and failed (-> error)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def report(self) -> str:
        """A few lines for the console."""
        lines = [
            f"data_prep: {len(self.done)} done, {len(self.skipped)} skipped (finished before), {len(self.failed)} failed"
        ]
        lines += [f"  FAILED {subject}: {error.splitlines()[0]}" for subject, error in sorted(self.failed.items())]
        return "\n".join(lines)


def cases_from_study_root(root: str | Path) -> list[CaseSpec]:
    """One DICOM case per sub-folder of ``root`` (hidden folders ignored), named after the folder.

    Raises:
        FileNotFoundError: ``root`` is not a folder or has no sub-folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"study root {root} is not a folder")
    cases = [CaseSpec(p.name, dicom=p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    if not cases:
        raise FileNotFoundError(f"study root {root} has no study sub-folders")
    return cases


def cases_from_manifest(path: str | Path) -> list[CaseSpec]:
    """Read a manifest csv (see the module docstring).

    Raises:
        FileNotFoundError: the manifest does not exist.
        ValueError: not UTF-8 text, no ``subject_id`` column, no case row, or a row that lacks ``subject_id`` or
            inputs (naming the line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"manifest {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [name.strip() for name in reader.fieldnames or []]
    if "subject_id" not in header:
        raise ValueError(
            f"manifest {path} has no subject_id column; expected subject_id and dicom or {', '.join(SEQUENCES)}"
            f" (header: {', '.join(header) or 'none, the file is empty'})"
        )
    cases = []
    for row in reader:
        row = {key.strip(): (value or "").strip() for key, value in row.items() if key}
        where = f"{path} line {reader.line_num}"
        if not row.get("subject_id"):
            raise ValueError(f"{where}: empty subject_id")
        grade = row.get("grade") or UNKNOWN_GRADE
        overrides = {s: row[f"{s}_series"] for s in SEQUENCES if row.get(f"{s}_series")}
        if row.get("dicom"):
            cases.append(
                CaseSpec(row["subject_id"], dicom=path.parent / row["dicom"], grade=grade, overrides=overrides)
            )
        elif all(row.get(s) for s in SEQUENCES):
            nifti = {s: path.parent / row[s] for s in SEQUENCES}
            cases.append(CaseSpec(row["subject_id"], nifti=nifti, grade=grade))
        else:
            raise ValueError(f"{where}: needs a 'dicom' folder or all of the columns {', '.join(SEQUENCES)}")
    if not cases:
        raise ValueError(f"manifest {path} has no case rows; expected one row per case under its header")
    return cases


def _prepare_one(case: CaseSpec, out_root: Path, options: PrepOptions) -> tuple[str, str | None, float]:
    """Worker: prepare one case; return (subject, error or None, seconds). Never raises for a bad case."""
    start = time.perf_counter()
    try:
        if case.dicom is not None:
            prepare_dicom_study(case.dicom, out_root, case.subject_id, options, case.overrides)
        else:
            prepare_nifti_case(case.nifti, out_root, case.subject_id, options)
        error = None
    except Exception as err:  # one bad study must not stop the batch: report it instead
        error = f"{type(err).__name__}: {err}"
        if not isinstance(err, _EXPECTED_ERRORS):  # a bug, not a bad study: keep the traceback for the report
            error += "\n" + traceback.format_exc()
    return case.subject_id, error, time.perf_counter() - start


def _worker_init(threads: int) -> None:
    import SimpleITK as sitk
    import torch

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)


def _process_context() -> multiprocessing.context.BaseContext:
    """Worker processes forked from a server that imported the pipeline once (fast, and safe with the threads of
    torch and ITK, which a plain fork of this process is not); ``spawn`` where there is no fork server (Windows).
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["data_prep.pipeline", "data_prep.dicom_ingest", "data_prep.skull_strip"])
    return context


def run_batch(
    cases: Sequence[CaseSpec],
    out_root: str | Path,
    options: PrepOptions | None = None,
    workers: int = 2,
    resume: bool = True,
    worker: Callable[[CaseSpec, Path, PrepOptions], tuple[str, str | None, float]] = _prepare_one,
) -> BatchSummary:
    """Prepare every case in ``workers`` processes.

    Args:
        cases: the cases; subject ids must be unique.
        out_root: output root (BraTS layout).
        options: :class:`~data_prep.pipeline.PrepOptions` for every case (default ``PrepOptions()``;
            ``threads`` defaults to ``cpu_count // workers`` per worker).
        workers: worker processes (forked from a fork server; ``spawn`` on Windows).
        resume: skip cases already finished in ``out_root``; when false, finished cases are redone
            (``overwrite`` is switched on).
        worker: the function run per case (tests swap in a crashing one).

    Returns:
        The :class:`BatchSummary`; also written as ``data_prep_failures.json`` and printed by the CLI.

    Raises:
        ValueError: duplicate subject ids or ``workers < 1``.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1; received {workers}")
    duplicates = sorted({c.subject_id for c in cases if sum(d.subject_id == c.subject_id for d in cases) > 1})
    if duplicates:
        raise ValueError(f"duplicate subject ids in the batch: {duplicates}")
    options = options or PrepOptions()
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    stale = remove_partial_dirs(out_root)
    if stale:
        logger.warning("removed %d unfinished case folders left by an interrupted run", stale)
    summary = BatchSummary()
    todo = []
    for case in cases:
        if resume and is_complete(out_root, case.subject_id):
            summary.skipped.append(case.subject_id)
        else:
            todo.append(case)
    if not resume:
        options = dataclasses.replace(options, overwrite=True)
    threads = options.threads or max(1, (os.cpu_count() or 1) // workers)
    with tqdm(total=len(todo), desc="data_prep", unit="case") as bar:
        crashed = _run_pool(todo, out_root, options, workers, threads, worker, summary, bar)
        # Cases a dying worker took down (or held): again, one process each, so the crash is attributed.
        for case in crashed:
            again = _run_pool([case], out_root, options, 1, threads, worker, summary, bar)
            for lost in again:
                summary.failed[lost.subject_id] = "worker process died (crash in a native library or out of memory)"
                bar.update(1)
    finished = {c.subject_id: c.grade for c in cases if is_complete(out_root, c.subject_id)}
    if finished:
        update_name_mapping(out_root, finished)
    write_json(out_root / FAILURES_FILE, {"failed": summary.failed, "done": summary.done, "skipped": summary.skipped})
    return summary


def _run_pool(
    cases: Sequence[CaseSpec],
    out_root: Path,
    options: PrepOptions,
    workers: int,
    threads: int,
    worker: Callable,
    summary: BatchSummary,
    bar: tqdm,
) -> list[CaseSpec]:
    """Run ``cases`` in one pool; record results in ``summary``; return the cases lost to a dead worker."""
    if not cases:
        return []
    lost = []
    context = _process_context()
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_worker_init, initargs=(threads,)
    ) as pool:
        futures = {pool.submit(worker, case, out_root, options): case for case in cases}
        for future in concurrent.futures.as_completed(futures):
            case = futures[future]
            try:
                subject, error, seconds = future.result()
            except BrokenProcessPool:
                lost.append(case)
                continue
            summary.seconds[subject] = seconds
            if error is None:
                summary.done.append(subject)
            else:
                summary.failed[subject] = error
                logger.warning("%s failed: %s", subject, error)
            bar.update(1)
            bar.set_postfix(failed=len(summary.failed))
    return lost
