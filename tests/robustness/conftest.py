"""Generators of bad inputs for the robustness corpus (issue 10) and the corpus table.

Every corpus case goes through :func:`expect_failure` (an exception: its type and a message naming the file,
field or subject and what was expected) or :func:`record` (an exit status and stderr, or a batch outcome);
both add a row (case, component, outcome). The table is written as markdown at the end of a session run
without xdist when ``ROBUSTNESS_CORPUS_TABLE`` names a file::

    ROBUSTNESS_CORPUS_TABLE=corpus.md .venv/bin/python -m pytest tests/robustness -p no:xdist -q

The generators below damage copies of a tiny synthetic BraTS-layout cohort (written by the real writer, so
the reader, the transforms and the bundles see real files) one file or one csv row at a time.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from monai_protoshare.data import brats
from monai_protoshare.data.synthetic import generate_cohort
from tests.bundles.conftest import TINY, tiny_overrides  # noqa: F401 - re-exported to the robustness tests

REPO = Path(__file__).resolve().parents[2]
#: Voxel size of the base cohort: 20 x 20 x 13 voxels over the BraTS field of view (a few kB a file).
SPACING = 12.0
SEQUENCES = ("t1", "t1ce", "t2", "flair")
_TABLE_ENV = "ROBUSTNESS_CORPUS_TABLE"
_MONAI_WRAPPERS = ("applying transform", "Failed to instantiate", "Failed to evaluate")
_HINTS = ("Fix or remove", "Fix name_mapping", "No valid case")
_ROWS: list[tuple[str, str, str]] = []


# ------------------------------------------------------------------ the corpus table
def record(case: str, component: str, outcome: str) -> None:
    """Add one row to the corpus table."""
    _ROWS.append((case, component, " ".join(outcome.split())))


def expect_failure(
    case: str,
    component: str,
    exception: type[BaseException] | tuple[type[BaseException], ...],
    match: str,
    func: Callable,
    *args,
    **kwargs,
) -> BaseException:
    """Call ``func``, assert it raises ``exception`` with a message matching ``match`` (``re.search``, DOTALL, over
    the messages of the exception and of the exceptions it was raised from), record the row, return the exception.

    MONAI wraps an error raised while a transform runs or a config object is instantiated in a ``RuntimeError``
    of its own; the row then shows the wrapper's type and the original error."""
    with pytest.raises(exception) as info:
        func(*args, **kwargs)
    chain = causes(info.value)
    text = "\n".join(str(e) for e in chain)
    assert re.search(match, text, re.DOTALL), f"{case}: {match!r} not in {text!r}"
    wrappers = [e for e in chain if str(e).startswith(_MONAI_WRAPPERS)]
    shown = next((e for e in chain if e not in wrappers), chain[-1])
    outcome = f"{type(shown).__name__}: {first_lines(str(shown))}"
    if wrappers:
        outcome = f"{type(info.value).__name__} (MONAI's wrapper) from {outcome}"
    record(case, component, outcome)
    return info.value


def causes(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions it was raised from, outermost first."""
    chain = [error]
    while chain[-1].__cause__ is not None and chain[-1].__cause__ not in chain:
        chain.append(chain[-1].__cause__)
    return chain


def first_lines(message: str, limit: int = 240) -> str:
    """The message for the table: temporary folders shortened, a problem list without its header and hint."""
    message = re.sub(r"/tmp/pytest-of-[^/]+/pytest-\d+/[^/\s']+/", "<tmp>/", message)
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith("(subject | file | problem):"):
        head = re.sub(r"BraTS dataset at .*?: (\d+ problem\(s\) in \d+ subject\(s\)).*", r"\1:", lines[0])
        lines = [head, *(line for line in lines[1:] if not line.startswith(_HINTS))]
    text = " / ".join(lines[:4])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get(_TABLE_ENV)
    if not path or os.environ.get("PYTEST_XDIST_WORKER") or not _ROWS:
        return
    escape = lambda text: text.replace("|", "\\|")  # noqa: E731
    lines = ["| # | case | component | outcome |", "| --- | --- | --- | --- |"]
    lines += [f"| {i} | {escape(c)} | {escape(k)} | {escape(o)} |" for i, (c, k, o) in enumerate(sorted(_ROWS), 1)]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def project_files(folders, suffixes: tuple[str, ...], names: tuple[str, ...] = ()) -> list[Path]:
    """Files of the repository's ``folders`` with one of ``suffixes`` (or a name in ``names``), not descending into
    hidden folders (virtual environments such as deploy/.venv-label, caches) or ``__pycache__``."""
    found = []
    for folder in folders:
        for root, dirs, files in os.walk(REPO / folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
            found += [Path(root) / f for f in sorted(files) if f.endswith(suffixes) or f in names]
    return found


# ------------------------------------------------------------------ the base cohort and copies of it
@pytest.fixture(scope="session")
def base_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three valid cases (HGG, LGG mix) at 12 mm; read-only by convention: damage a :func:`cohort` copy."""
    return generate_cohort(
        tmp_path_factory.mktemp("robust_base"), n_cases=3, seed=2, spacing=SPACING, lgg_fraction=0.5, progress=False
    )


@pytest.fixture
def cohort(base_cohort: Path, tmp_path: Path) -> Path:
    """A writable copy of :func:`base_cohort` (without the validation cache)."""
    return Path(shutil.copytree(base_cohort, tmp_path / "cohort", ignore=shutil.ignore_patterns(brats.CACHE_NAME)))


def subject(index: int) -> str:
    """Subject id of the 1-based case ``index``."""
    return f"BraTS20_Training_{index:03d}"


def case_file(root: Path, index: int, kind: str) -> Path:
    """``<root>/<subject>/<subject>_<kind>.nii.gz``."""
    sid = subject(index)
    return root / sid / f"{sid}_{kind}.nii.gz"


# ------------------------------------------------------------------ damaged NIfTI files
def write_empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def truncate(path: Path, fraction: float = 0.5) -> Path:
    """Cut the file to ``fraction`` of its bytes (an interrupted download)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def write_not_nifti(path: Path) -> Path:
    """A text file under a ``.nii.gz`` name."""
    path.write_text("<html><body>404 Not Found</body></html>\n")
    return path


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(path)
    return np.asarray(image.dataobj), image.affine


def save(path: Path, data: np.ndarray, affine: np.ndarray | None) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def with_ndim(path: Path, ndim: int) -> Path:
    """Rewrite a 3-D volume as 2-D (its middle slice), 4-D (two volumes) or 5-D (a trailing pair of axes)."""
    data, affine = load(path)
    if ndim == 2:
        data = data[:, :, data.shape[2] // 2]
    elif ndim == 4:
        data = np.stack([data, data], axis=-1)
    elif ndim == 5:
        data = data[..., None, None].repeat(2, axis=-1)
    else:
        raise ValueError(f"ndim must be 2, 4 or 5; got {ndim}")
    return save(path, data, affine)


def with_voxel(path: Path, value: float) -> Path:
    """Set one voxel inside the volume to ``value`` (NaN, Inf)."""
    data, affine = load(path)
    data = data.astype(np.float32)
    data[tuple(n // 2 for n in data.shape)] = value
    return save(path, data, affine)


def zeros(path: Path) -> Path:
    """Every voxel 0 (an empty or failed export)."""
    data, affine = load(path)
    return save(path, np.zeros_like(data), affine)


def with_shape(path: Path, shape: tuple[int, ...]) -> Path:
    """The volume cropped or zero-padded to ``shape`` (a sequence of another grid)."""
    data, affine = load(path)
    out = np.zeros(shape, dtype=data.dtype)
    common = tuple(slice(0, min(a, b)) for a, b in zip(shape, data.shape, strict=True))
    out[common] = data[common]
    return save(path, out, affine)


def shifted(path: Path, mm: float = 7.0) -> Path:
    """The same voxels with the origin moved by ``mm`` along x (a sequence of another session)."""
    data, affine = load(path)
    affine = affine.copy()
    affine[0, 3] += mm
    return save(path, data, affine)


def with_sform(path: Path, affine: np.ndarray) -> Path:
    """Store ``affine`` as the sform alone, written into the header as is (a qform cannot hold a singular or
    non-finite matrix, and nibabel would refuse to decompose one)."""
    data, _ = load(path)
    header = nib.Nifti1Image(data, np.eye(4)).header.copy()
    header.set_qform(None, code=0)
    header["sform_code"] = 1
    for row, name in enumerate(("srow_x", "srow_y", "srow_z")):
        header[name] = affine[row]
    nib.save(nib.Nifti1Image(data, None, header), path)
    return path


def singular_affine(path: Path) -> Path:
    affine = load(path)[1].copy()
    affine[2, 2] = 0.0
    return with_sform(path, affine)


def nonfinite_affine(path: Path) -> Path:
    affine = load(path)[1].copy()
    affine[0, 0] = np.nan
    return with_sform(path, affine)


def seg_label(path: Path, label: int) -> Path:
    data, affine = load(path)
    data = data.copy()
    data[tuple(n // 2 for n in data.shape)] = label
    return save(path, data, affine)


# ------------------------------------------------------------------ damaged name_mapping.csv
def csv_rows(root: Path) -> list[str]:
    return (root / brats.NAME_MAPPING).read_text(encoding="utf-8").splitlines()


def write_csv(root: Path, content: str | bytes) -> Path:
    path = root / brats.NAME_MAPPING
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


# ------------------------------------------------------------------ untrusted checkpoints
class _CreatesMarker:
    """A pickle whose loading would create ``marker`` (code smuggled into a checkpoint)."""

    def __init__(self, marker: Path) -> None:
        self.marker = Path(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    """A torch file holding a state dict plus an object whose unpickling creates ``marker``."""
    import torch

    torch.save({"network": {"weight": torch.zeros(1)}, "payload": _CreatesMarker(marker)}, path)
    return path


def plain_pickle(path: Path, marker: Path) -> Path:
    """A bare pickle (not a torch zip file) whose unpickling creates ``marker``."""
    path.write_bytes(pickle.dumps(_CreatesMarker(marker), protocol=2))
    return path
