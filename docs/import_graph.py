"""Package-level import graph of the repository, read from the code with :mod:`ast` (no import is executed).

Every ``import``/``from ... import`` statement of every module counts, including those inside functions
and under ``if TYPE_CHECKING:``: an import hidden in a function is still a dependency. A module maps to
its package node: ``monai_protoshare.<sub>`` for the library's sub-packages (and its top-level modules,
e.g. ``monai_protoshare.io``), ``data_prep``, ``deploy`` and ``benchmarks`` for the others. Only edges
between these nodes are kept; third-party imports are ignored.

Usage::

    python docs/import_graph.py   # docs/images/import_graph.dot (+ .svg where Graphviz is installed) and the
                                  # mermaid diagram between the markers of docs/architecture.md

The mermaid diagram renders on GitHub without any tool; ``--dot-dir`` and ``--doc`` write elsewhere (e.g. to
compare two trees).
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Top-level folders whose modules form nodes; the library is split into its sub-packages.
ROOTS = ("monai_protoshare", "data_prep", "deploy", "benchmarks")
LIBRARY = "monai_protoshare"
BEGIN, END = "<!-- import-graph:begin (python docs/import_graph.py) -->", "<!-- import-graph:end -->"


def module_name(path: Path, repo: Path = REPO) -> str:
    """Dotted module name of ``path`` relative to ``repo`` (``pkg/__init__.py`` -> ``pkg``)."""
    parts = list(path.relative_to(repo).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def iter_modules(repo: Path = REPO, roots: tuple[str, ...] = ROOTS) -> Iterator[tuple[str, Path]]:
    """``(module name, path)`` of every ``.py`` file under ``roots``, in sorted order (hidden folders such as
    ``deploy/.venv-label`` are not the project's code)."""
    for root in roots:
        for path in sorted((repo / root).rglob("*.py")):
            if not any(part.startswith(".") for part in path.relative_to(repo).parts):
                yield module_name(path, repo), path


def imported_modules(path: Path, module: str) -> set[str]:
    """Absolute names of every module imported anywhere in the file (relative imports resolved).

    ``from pkg import name`` yields both ``pkg`` and ``pkg.name`` (``name`` may be a submodule).
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def package_of(module: str) -> str | None:
    """The graph node of a module name, or ``None`` for third-party modules."""
    parts = module.split(".")
    if parts[0] not in ROOTS:
        return None
    if parts[0] == LIBRARY and len(parts) > 1:
        return f"{LIBRARY}.{parts[1]}"
    return parts[0]


def package_graph(repo: Path = REPO) -> dict[str, set[str]]:
    """``{package: {packages it imports}}`` over every module under :data:`ROOTS` (self-edges dropped)."""
    graph: dict[str, set[str]] = {}
    known = {package_of(name) for name, _ in iter_modules(repo)}
    for name, path in iter_modules(repo):
        source = package_of(name)
        targets = graph.setdefault(source, set())
        for imported in imported_modules(path, name):
            target = package_of(imported)
            if target in known and target != source:
                targets.add(target)
    # ``from monai_protoshare import data`` resolves to ``monai_protoshare`` too: keep only real sub-packages.
    for targets in graph.values():
        targets.discard(LIBRARY)
    graph.pop(LIBRARY, None)
    return graph


def to_dot(graph: dict[str, set[str]]) -> str:
    """Graphviz source, one edge a line, sorted."""
    lines = ["digraph imports {", "  rankdir=LR;", "  node [shape=box, fontname=Helvetica];"]
    lines += [f'  "{node}";' for node in sorted(graph)]
    lines += [f'  "{src}" -> "{dst}";' for src in sorted(graph) for dst in sorted(graph[src])]
    return "\n".join([*lines, "}", ""])


def to_mermaid(graph: dict[str, set[str]]) -> str:
    """A mermaid ``graph LR`` block (node ids without dots); an arrow ``A --> B``: A imports B."""
    ident = {node: node.replace(".", "_") for node in graph}
    lines = ["```mermaid", "graph LR"]
    lines += [f"  {ident[node]}[{node}]" for node in sorted(graph)]
    lines += [f"  {ident[src]} --> {ident[dst]}" for src in sorted(graph) for dst in sorted(graph[src])]
    return "\n".join([*lines, "```"])


def replace_block(text: str, block: str) -> str:
    """``text`` with what lies between :data:`BEGIN` and :data:`END` replaced by ``block``.

    Raises:
        ValueError: the markers are missing.
    """
    if BEGIN not in text or END not in text:
        raise ValueError(f"the document needs the lines {BEGIN!r} and {END!r} around the diagram.")
    head, rest = text.split(BEGIN, 1)
    return f"{head}{BEGIN}\n{block}\n{END}{rest.split(END, 1)[1]}"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dot-dir", type=Path, default=REPO / "docs" / "images", help="folder of import_graph.dot")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "architecture.md", help="document to update")
    args = parser.parse_args(argv)
    graph = package_graph()
    dot_file = args.dot_dir / "import_graph.dot"
    write_atomic(dot_file, to_dot(graph))
    if shutil.which("dot"):
        subprocess.run(["dot", "-Tsvg", str(dot_file), "-o", str(dot_file.with_suffix(".svg"))], check=True)
    doc = args.doc.read_text() if args.doc.is_file() else f"{BEGIN}\n{END}\n"
    write_atomic(args.doc, replace_block(doc, to_mermaid(graph)))
    for src in sorted(graph):
        print(f"{src} -> {', '.join(sorted(graph[src])) or '-'}")


if __name__ == "__main__":
    main()
