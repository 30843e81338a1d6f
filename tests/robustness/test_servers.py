"""Servers bind 127.0.0.1 unless told otherwise, and the MONAI Label app serves only images of its studies folder.

The Label app (deploy/monai_label) runs in its own environment (DESIGN §11); its end-to-end server tests are in
tests/deploy. Here its image-id check, ``image_in_studies``, is taken from the app's source and run against a
corpus of hostile ids (its module imports MONAI Label, which this environment does not have).
"""

from __future__ import annotations
import __future__

import ast
import os
import re
from pathlib import Path
from typing import Any

import pytest

from .conftest import expect_failure, project_files, record

REPO = Path(__file__).resolve().parents[2]
LABEL_APP = REPO / "deploy" / "monai_label"
_SOURCES = (".py", ".sh", ".json", ".yaml", ".yml", ".toml", ".cfg")
COMPONENT = "Label server (image id)"


def test_no_server_defaults_to_every_interface():
    files = project_files(("monai_protoshare", "data_prep", "deploy", "bundles"), _SOURCES, names=("Makefile",))
    everywhere = [
        f"{p.relative_to(REPO)}:{n}"
        for p in files
        for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if re.search(r"0\.0\.0\.0|host\s*=\s*['\"]['\"]", line) and not line.lstrip().startswith(("#", "//"))
    ]
    assert everywhere == []


def test_label_server_script_binds_loopback_by_default():
    serve = LABEL_APP / "serve.sh"
    if not serve.is_file():
        pytest.skip("pending: deploy/monai_label/serve.sh is being written by the deploy helper")
    assert re.search(r"--host \"\$\{HOST:-127\.0\.0\.1\}\"", serve.read_text())
    record("Label server started without HOST", "Label server", "binds 127.0.0.1 (serve.sh: --host ${HOST:-127.0.0.1})")


class HTTPException(Exception):
    """Stand-in for FastAPI's exception (status code and detail)."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code, self.detail = status_code, detail


@pytest.fixture(scope="module")
def image_in_studies():
    source = LABEL_APP / "main.py"
    if not source.is_file():
        pytest.skip("pending: deploy/monai_label/main.py is being written by the deploy helper")
    tree = ast.parse(source.read_text(encoding="utf-8"))
    found = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "image_in_studies"]
    if not found:
        pytest.skip("pending: deploy/monai_label/main.py has no image_in_studies yet")
    namespace: dict[str, Any] = {"os": os, "Any": Any, "HTTPException": HTTPException}
    code = compile(ast.Module(found, []), str(source), "exec", __future__.annotations.compiler_flag, True)
    exec(code, namespace)  # the app's own function, with the stand-in exception
    return namespace["image_in_studies"]


class _Datastore:
    """Maps ids to files like MONAI Label's local datastore (``<studies>/<id>.nii.gz``), without checks."""

    def __init__(self, studies: Path) -> None:
        self.studies = studies

    def get_image_uri(self, image_id: str) -> str:
        path = self.studies / f"{image_id}.nii.gz"
        return str(path) if os.path.lexists(path) else ""


@pytest.mark.parametrize(
    ("image_id", "status", "detail"),
    [
        ("../outside_t1ce", 403, "must be an image id of the studies folder; got '../outside_t1ce'"),
        ("..", 403, "must be an image id"),
        ("{outside}", 403, "must be an image id"),  # an absolute path
        ("case\\..\\..\\outside_t1ce", 403, "must be an image id"),
        ("", 403, "must be an image id"),
        ("linked_t1ce", 403, "resolves outside the studies folder"),  # a symlink in the studies folder
        ("no_such_case_t1ce", 404, "is not in the studies folder"),
    ],
)
def test_label_image_ids_outside_the_studies_are_refused(image_in_studies, tmp_path, image_id, status, detail):
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "case_t1ce.nii.gz").write_bytes(b"image")
    outside = tmp_path / "outside_t1ce.nii.gz"
    outside.write_bytes(b"secret")
    (studies / "linked_t1ce.nii.gz").symlink_to(outside)
    case = f"Label image id {image_id!r}".replace("'{outside}'", "(absolute path of a file outside)")
    image_id = image_id.format(outside=outside)
    error = expect_failure(
        case,
        COMPONENT,
        HTTPException,
        re.escape(detail),
        image_in_studies,
        _Datastore(studies),
        image_id,
        studies,
    )
    assert error.status_code == status
    assert image_in_studies(_Datastore(studies), "case_t1ce", studies) == os.path.realpath(studies / "case_t1ce.nii.gz")
