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


def config_from_argv(argv: list[str] | None = None) -> dict[str, Any] | None:
    """The merged config of a ``python -m monai.bundle run --config_file ... --id value ...`` command line:
    the config files read in order, then the ``--id value`` overrides (``None`` when there is no config file)."""
    import ast

    from monai.bundle import ConfigParser

    args = list(sys.argv[1:] if argv is None else argv)
    options: dict[str, str] = {}
    for i, arg in enumerate(args[:-1]):
        if arg.startswith("--"):
            options[arg[2:]] = args[i + 1]
    if "config_file" not in options:
        return None
    files = options.pop("config_file")
    files = ast.literal_eval(files) if files.strip().startswith("[") else files
    parser = ConfigParser()
    parser.read_config(files)
    for key, value in options.items():
        if key in ("meta_file", "logging_file", "args_file", "run_id", "init_id", "final_id", "tracking"):
            continue
        try:
            parser[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parser[key] = value
    return parser.config


def save_run_info(output_dir: str | os.PathLike, config: dict[str, Any] | None = None, **extra: Any) -> Path:
    """Write ``run_info.json`` (command, time, host, git SHA, package versions, ``extra``) and the merged config
    as ``run_config.yaml`` into ``output_dir``. Returns ``output_dir``.

    Bundles call it from ``initialize``, where the config is rebuilt from the command line
    (:func:`config_from_argv`); in-process runners (:func:`~monai_protoshare.workflows.demo.bundle_workflow`)
    pass ``ConfigWorkflow.parser.config``.
    """
    if config is None:
        config = config_from_argv()
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
