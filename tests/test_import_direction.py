"""The one-way import order of docs/architecture.md, read from every module's imports with ``ast``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_SPEC = importlib.util.spec_from_file_location("import_graph", REPO / "docs" / "import_graph.py")
import_graph = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(import_graph)

#: Layers, lowest first: a package imports packages of lower layers only (not even of its own layer).
ORDER = (
    ("monai_protoshare._lazy", "monai_protoshare.io"),
    ("monai_protoshare.data", "monai_protoshare.networks", "monai_protoshare.metrics"),
    ("monai_protoshare.losses",),
    ("monai_protoshare.explain",),
    ("monai_protoshare.engines",),
    ("monai_protoshare.handlers",),
    ("monai_protoshare.workflows",),
    ("data_prep",),
    ("deploy", "benchmarks"),
)
#: Edges against the order that a pending refactor removes, listed so that they cannot spread, and asserted
#: present so that an entry goes when its edge does.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()
LAYER = {package: rank for rank, layer in enumerate(ORDER) for package in layer}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph.package_graph()


def test_every_package_has_a_place_in_the_order(graph):
    assert set(graph) == set(LAYER), "place new packages in ORDER (and in docs/architecture.md)"


def test_packages_import_only_lower_layers(graph):
    upward = {(src, dst) for src, targets in graph.items() for dst in targets if LAYER[dst] >= LAYER[src]}
    assert upward - KNOWN_VIOLATIONS == set(), "imports against the order of docs/architecture.md"
    assert KNOWN_VIOLATIONS <= upward, "a known violation is gone: remove it from KNOWN_VIOLATIONS"


def test_the_library_never_imports_data_prep_deploy_or_benchmarks():
    offenders = [
        f"{name} imports {imported}"
        for name, path in import_graph.iter_modules(roots=("monai_protoshare",))
        for imported in sorted(import_graph.imported_modules(path, name))
        if imported.split(".")[0] in ("data_prep", "deploy", "benchmarks")
    ]
    assert offenders == []


def test_imports_are_found_in_functions_and_relative_imports_are_resolved(tmp_path):
    """The walker sees what the order test relies on: an import hidden in a function, ``from ..x import y``."""
    module = tmp_path / "monai_protoshare" / "engines" / "trainer.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "from ..networks import build\n\ndef f():\n    from ..handlers.push import Push\n    import data_prep.x\n"
    )
    found = import_graph.imported_modules(module, "monai_protoshare.engines.trainer")
    assert {"monai_protoshare.networks", "monai_protoshare.handlers.push", "data_prep.x"} <= found
    assert {import_graph.package_of(m) for m in found} == {
        "monai_protoshare.networks",
        "monai_protoshare.handlers",
        "data_prep",
    }
