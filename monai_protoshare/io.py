"""Atomic file output: a crash never leaves a half-written file under the final name.

Every writer in the project goes through :func:`atomic_path`: the content is written to a temporary
file in the destination folder, flushed to disk, then renamed over the final name (``os.replace`` is
atomic on POSIX and Windows within one file system). A process killed mid-write leaves only a hidden
temporary file, which :func:`remove_stale_temporaries` deletes.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "remove_stale_temporaries", "write_json", "write_text"]

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``, on error delete it.

    Args:
        path: final destination. Parent folders are created.
        suffix: suffix of the temporary file (some writers infer the format from it, e.g. ``.nii.gz``);
            defaults to the full suffix of ``path``.

    Example:
        >>> with atomic_path("out/map.nii.gz") as tmp:
        ...     nib.save(img, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the final file the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files :func:`atomic_path` left next to ``path`` when its process was killed mid-write.

    Only call it where no other process may be writing ``path`` at the same moment (e.g. a run's own checkpoint
    at its start). Returns the deleted files.
    """
    path = Path(path)
    pattern = f".{glob.escape(path.stem)}.*.tmp{glob.escape(''.join(path.suffixes))}"
    stale = sorted(path.parent.glob(pattern))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path`` and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Atomically write ``obj`` as JSON to ``path`` and return the path."""
    return write_text(path, json.dumps(obj, indent=indent, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    """Serialise numpy/torch scalars and arrays, and paths."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")
