"""The BraTS validation cache (DESIGN §3): files whose voxels passed, keyed by (path, size, modification time).

Written next to the data or, when that folder is read-only, in the user cache folder
(``$XDG_CACHE_HOME/monai_protoshare/brats_validation/<digest>.json``), so a second validation reads no voxels.
A cache that cannot be read is ignored; one that cannot be written anywhere is only logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from monai_protoshare.data.brats_records import FileInfo
from monai_protoshare.io import write_json

__all__ = ["CACHE_NAME", "cache_key", "file_stat", "load_cache", "save_cache"]

logger = logging.getLogger(__name__)

#: File name of the cache next to the data.
CACHE_NAME = ".monai_protoshare_validation.json"
_CACHE_VERSION = 2  # 2: sequences whose voxels are all 0 are rejected


def file_stat(path: Path) -> list[int]:
    """``[size in bytes, modification time in ns]``: a cached entry is valid while both match."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def cache_key(data_root: Path, path: Path) -> str:
    """``path`` relative to ``data_root`` (POSIX), or absolute when it lies outside."""
    try:
        return path.relative_to(data_root).as_posix()
    except ValueError:
        return path.as_posix()


def _cache_paths(data_root: Path) -> list[Path]:
    """Cache next to the data first, then in the user cache folder (for read-only data)."""
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "monai_protoshare"
    digest = hashlib.sha256(str(data_root).encode()).hexdigest()[:16]
    return [data_root / CACHE_NAME, user_cache / "brats_validation" / f"{digest}.json"]


def load_cache(data_root: Path) -> dict[str, Any]:
    """The cached entries of ``data_root`` (cache key -> stat, shape, affine); empty when there is no usable cache."""
    for path in _cache_paths(data_root):
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if content.get("version") == _CACHE_VERSION and isinstance(content.get("files"), dict):
            return content["files"]
    return {}


def save_cache(data_root: Path, old: dict[str, Any], infos: dict[Path, FileInfo]) -> None:
    """Record the files whose voxels passed; a cache that cannot be written anywhere is only logged."""
    files = {
        cache_key(data_root, path): {"stat": file_stat(path), "shape": list(info.shape), "affine": info.affine.tolist()}
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
