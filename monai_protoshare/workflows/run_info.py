"""Provenance saved with every run: the merged config, the command, the git SHA and package versions."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from ..io import write_json, write_text

__all__ = ["PACKAGES", "git_sha", "save_run_info"]

PACKAGES = ("monai_protoshare", "torch", "monai", "pytorch-ignite", "numpy", "nibabel", "SimpleITK", "scikit-learn")


def git_sha(path: str | os.PathLike | None = None) -> str | None:
    """Commit of the repository holding ``path`` (default: this package), with ``-dirty`` for local edits."""
    where = Path(path or __file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def save_run_info(output_dir: str | os.PathLike, config: dict[str, Any] | None = None, **extra: Any) -> Path:
    """Write ``run_info.json`` (command, time, host, git SHA, package versions, ``extra``) and, when given, the
    merged config as ``run_config.yaml`` into ``output_dir``. Returns ``output_dir``.

    Bundles call it from ``initialize``; the cross-validation runner and the demo pass the parsed config
    (``ConfigWorkflow.parser.config``).
    """
    out = Path(output_dir)
    info = {
        "command": sys.argv,
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "git_sha": git_sha(),
        "packages": _versions(),
        **extra,
    }
    write_json(out / "run_info.json", info)
    if config is not None:
        write_text(out / "run_config.yaml", yaml.safe_dump(_plain(config), sort_keys=False))
    return out


def _plain(obj: Any) -> Any:
    """Config content as plain YAML types (instantiated objects become their repr)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)
