"""Servers of the project bind 127.0.0.1 unless told otherwise (the MONAI Label app lives in deploy/monai_label)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_SOURCES = (".py", ".sh", ".json", ".yaml", ".yml", ".toml", ".cfg")


def _project_files(folder: Path) -> list[Path]:
    """Source files of ``folder``, without virtual environments and caches (hidden folders)."""
    return [
        p
        for p in sorted(folder.rglob("*"))
        if p.is_file()
        and (p.suffix in _SOURCES or p.name == "Makefile")
        and not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(REPO).parts)
    ]


def test_no_server_defaults_to_every_interface():
    files = [p for d in ("monai_protoshare", "data_prep", "deploy", "bundles") for p in _project_files(REPO / d)]
    everywhere = [
        f"{p.relative_to(REPO)}:{n}"
        for p in files
        for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if re.search(r"0\.0\.0\.0|host\s*=\s*['\"]['\"]", line)
    ]
    assert everywhere == []


def test_label_app_binds_localhost_by_default():
    label = REPO / "deploy" / "monai_label"
    files = _project_files(label) if label.is_dir() else []
    if not files:
        pytest.skip("pending: deploy/monai_label is being written by the deploy helper")
    text = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)
    assert "127.0.0.1" in text
