"""The Table-1 report: mean ± std over folds of BAC, IDS, AP and ECE, one row per model/ablation, paper order.

``python -m monai_protoshare.workflows.table1 --root outputs/cv`` collects ``<root>/<run>/fold<k>/metrics.json``
(the layout :mod:`~monai_protoshare.workflows.crossval` writes) into ``table1.md`` and ``table1.csv``. The last
column names the map the AP (and IDS) of each row was computed on: the class-map convention of a prototype model
(``class_map`` in ``metrics.json``; eq. 28's reading, DESIGN §8, with ``ap_by_class_map`` holding the others) or the
CNN's attribution method. Where the cross-validation runner recorded it (``fold<k>/timing.json``), a row also
gives the hours its folds took to train and evaluate.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..io import write_text

__all__ = [
    "PAPER_TABLE1",
    "ROWS",
    "Row",
    "collect",
    "format_mean_sd",
    "mean_sd",
    "render_csv",
    "render_markdown",
    "sample_mean_sd",
    "write_table",
]


@dataclass(frozen=True)
class Row:
    """One Table-1 row: the run folder name, the paper's model/ablation/design columns."""

    run: str
    model: str
    ablation: str
    design: str


#: Table 1's rows in the paper's order; ``run`` is the output folder of the cross-validation runner
ROWS = (
    Row("cnn", "CNN: Grad-CAM", "–", "–"),
    Row("cnn_occlusion", "CNN: Occlusion", "–", "–"),
    Row("cnn_gradcampp", "CNN: Grad-CAM++", "–", "–"),  # beyond the paper (FPN-IAIA-BL's comparison)
    Row("protopnet", "ProtoPNet", "–", "–"),
    Row("xprotonet", "XProtoNet", "–", "–"),
    Row("mprotonet", "MProtoNet", "–", "–"),
    Row("maprotonet", "MAProtoNet", "–", "–"),
    Row("fpn_iaia_bl", "FPN-IAIA-BL", "–", "–"),  # beyond the paper (seed 003)
    Row("um_protoshare_A1", "UM-ProtoShare", "A1", "single-scale; class-specific"),
    Row("um_protoshare_A2", "UM-ProtoShare", "A2", "single-scale; class-agnostic"),
    Row("um_protoshare_B", "UM-ProtoShare", "B", "multi-scale; class-agnostic"),
    Row("um_protoshare_C", "UM-ProtoShare", "C", "multi-scale; class-agnostic; decoder"),
    Row("um_protoshare_D", "UM-ProtoShare", "D", "multi-scale; class-agnostic; decoder; gated fusions"),
    Row("um_protoshare_E1", "UM-ProtoShare", "E1", "fine-heavy"),
    Row("um_protoshare", "UM-ProtoShare", "E2", "mid-heavy"),
    Row("um_protoshare_E3", "UM-ProtoShare", "E3", "coarse-heavy"),
    # beyond the paper: the fine-annotation loss (FPN-IAIA-BL eq. 5)
    Row("mprotonet_fine", "MProtoNet", "fine", "fine-annotation loss; uses masks in training"),
    Row("fpn_iaia_bl_fine", "FPN-IAIA-BL", "fine", "fine-annotation loss; uses masks in training"),
    Row("um_protoshare_fine", "UM-ProtoShare", "E2 + fine", "mid-heavy; fine-annotation loss; uses masks in training"),
)

#: the paper's Table 1 (BAC, IDS, AP in percent as mean, std) for comparison
PAPER_TABLE1 = {
    "cnn": ((89.73, 2.36), (14.85, 5.21), (10.65, 5.63)),
    "cnn_occlusion": ((89.73, 2.36), (10.43, 4.59), (15.63, 3.84)),
    "protopnet": ((86.42, 1.78), (21.56, 5.83), (11.73, 3.02)),
    "xprotonet": ((87.23, 1.59), (17.46, 4.98), (18.12, 2.76)),
    "mprotonet": ((84.69, 3.03), (7.53, 3.24), (79.93, 1.32)),
    "maprotonet": ((87.36, 3.26), (6.83, 3.12), (85.29, 4.14)),
    "um_protoshare_A1": ((85.92, 2.14), (7.13, 2.93), (81.38, 2.23)),
    "um_protoshare_A2": ((87.43, 1.27), (7.49, 4.07), (83.28, 3.41)),
    "um_protoshare_B": ((88.85, 2.56), (6.52, 3.29), (85.89, 1.24)),
    "um_protoshare_C": ((86.47, 2.85), (5.23, 2.18), (87.51, 1.38)),
    "um_protoshare_D": ((88.14, 2.74), (5.36, 1.28), (86.45, 1.38)),
    "um_protoshare_E1": ((87.90, 2.90), (4.60, 1.20), (90.10, 1.80)),
    "um_protoshare": ((88.40, 2.80), (5.10, 1.30), (88.72, 1.60)),
    "um_protoshare_E3": ((89.21, 3.18), (5.98, 2.57), (85.80, 2.08)),
}

METRICS = (("bac", 100.0), ("ids", 1.0), ("ap", 100.0), ("ece", 100.0))  # metrics.json units -> percent


def collect(root: str | Path) -> dict[str, list[dict]]:
    """``run -> [metrics.json of each fold]`` for every ``<root>/<run>/fold<k>/metrics.json`` (with its
    ``timing.json``, where present, under ``"timing"``)."""
    found: dict[str, list[dict]] = {}
    for path in sorted(Path(root).glob("*/fold*/metrics.json")):
        metrics = json.loads(path.read_text())
        timing = path.with_name("timing.json")
        if timing.is_file():
            metrics["timing"] = json.loads(timing.read_text())
        found.setdefault(path.parent.parent.name, []).append(metrics)
    return found


def mean_sd(values: list[float]) -> tuple[float, float] | None:
    """Mean and population std (ddof 0, as MProtoNet reports over folds)."""
    return (statistics.fmean(values), statistics.pstdev(values)) if values else None


def sample_mean_sd(values: list[float]) -> tuple[float, float] | None:
    """Mean and sample std (ddof 1: the spread of repeated runs, e.g. the demo over cohort seeds); the std of a
    single value is NaN (undefined), None for no value."""
    if not values:
        return None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def _summary(folds: list[dict]) -> list[tuple[float, float] | None]:
    return [mean_sd([f[k] * scale for f in folds if f.get(k) is not None]) for k, scale in METRICS]


def format_mean_sd(stat: tuple[float, float] | None) -> str:
    """``"0.75 ± 0.18"`` for a :func:`mean_sd` result, ``""`` for None."""
    return "" if stat is None else f"{stat[0]:.2f} ± {stat[1]:.2f}"


def _attribution_map(folds: list[dict]) -> str:
    """The convention(s) of a row's AP column: the folds' ``class_map`` (with ProtoPNet's map), else ``attribution``."""
    names = set()
    for f in folds:
        name = f.get("class_map") or f.get("attribution") or "unrecorded"
        names.add(f"{name} ({f['protopnet_map']})" if f.get("protopnet_map") else name)
    return ", ".join(sorted(names))


def _hours(folds: list[dict]) -> str:
    """Total training + evaluation time of a row's folds in hours (each fold's ``timing.json``, written by the
    cross-validation runner), ``""`` when a fold has none."""
    seconds = [f.get("timing", {}).get("train_s", 0.0) + f.get("timing", {}).get("evaluate_s", 0.0) for f in folds]
    return f"{sum(seconds) / 3600:.2f}" if folds and all(f.get("timing") for f in folds) else ""


def _table_rows(results: dict[str, list[dict]]) -> list[list[str]]:
    rows = []
    for row in ROWS:
        if row.run not in results:
            continue
        ours = _summary(results[row.run])
        paper = PAPER_TABLE1.get(row.run)
        rows.append(
            [row.model, row.ablation, row.design, *(format_mean_sd(s) for s in ours), str(len(results[row.run]))]
            + ([format_mean_sd(s) for s in paper] if paper else ["", "", ""])
            + [_hours(results[row.run])]
            + [_attribution_map(results[row.run])]
        )
    return rows


HEADER = ["Model", "Ablation", "Design configuration", "BAC (%, ↑)", "IDS (%, ↓)", "AP (%, ↑)", "ECE (%, ↓)",
          "folds", "paper BAC", "paper IDS", "paper AP", "train + eval (h)", "AP map"]  # fmt: skip


def render_markdown(results: dict[str, list[dict]], title: str = "Table 1 (mean ± std over folds)") -> str:
    lines = [f"# {title}", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in _table_rows(results)]
    return "\n".join(lines) + "\n"


def render_csv(results: dict[str, list[dict]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(HEADER)
    writer.writerows(_table_rows(results))
    return buffer.getvalue()


def write_table(root: str | Path, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``table1.md`` and ``table1.csv`` for the runs under ``root``; returns their paths."""
    results = collect(root)
    if not results:
        raise FileNotFoundError(f"no <run>/fold<k>/metrics.json under '{root}'.")
    out = Path(out_dir or root)
    return write_text(out / "table1.md", render_markdown(results)), write_text(out / "table1.csv", render_csv(results))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="folder holding <run>/fold<k>/metrics.json")
    parser.add_argument("--out", help="destination folder (default: --root)")
    args = parser.parse_args(argv)
    md, _ = write_table(args.root, args.out)
    print(md.read_text())


if __name__ == "__main__":
    main()
