"""Cross-validation of the segmentation bundles and their table (issue 23), like the grading Table 1.

``python -m monai_protoshare.workflows.seg_table --dataset_dir D --bundles proto_seg segresnet --folds 0-4 --prune``

Every fold of every bundle is trained and evaluated in ``<output_dir>/<bundle>/fold<k>/`` (finished work is skipped,
as in :mod:`~monai_protoshare.workflows.crossval`, whose fold runner this uses); with ``--prune`` the pruning curve
(``prune.yaml``) is computed too. ``seg_table.md`` / ``seg_table.csv`` give mean ± sd over folds of Dice per region
(%), HD95 per region (mm, cases with an undefined HD95 left out) and every deletion area, and, where pruning ran,
the whole-tumour Dice at each fraction of channels removed. ``--table_only`` rebuilds the table from the folders.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from monai_protoshare.io import write_text

from .crossval import ModelSpec, parse_folds, run_fold
from .demo import DEFAULT_BUNDLES_DIR, bundle_workflow
from .table1 import collect, format_mean_sd, mean_sd

__all__ = ["main", "render_seg_table", "run_seg_crossval", "write_seg_table"]

logger = logging.getLogger(__name__)

REGIONS = ("TC", "WT", "ET")


def _columns(results: dict[str, list[dict]]) -> list[tuple[str, str, float]]:
    """(metrics.json key, column title, scale): Dice in %, HD95 in mm, then every deletion area found."""
    deletion = sorted({k for folds in results.values() for f in folds for k in f if k.startswith("deletion_")})
    deletion = [k for k in deletion if k != "deletion_region"]
    return (
        [(f"dice_{r}", f"Dice {r} (%)", 100.0) for r in REGIONS]
        + [(f"hd95_{r}", f"HD95 {r} (mm)", 1.0) for r in REGIONS]
        + [(k, f"deletion {k.removeprefix('deletion_')}", 1.0) for k in deletion]
    )


def _values(folds: list[dict], key: str, scale: float) -> list[float]:
    """The folds' finite values of ``key`` times ``scale`` (a fold whose HD95 is undefined, NaN, is left out)."""
    return [f[key] * scale for f in folds if isinstance(f.get(key), (int, float)) and f[key] == f[key]]


def _pruning(root: Path, run: str) -> dict[float, list[float]]:
    """Whole-tumour Dice (%) at each pruned fraction, one value per fold with a ``pruning.json``."""
    by_fraction: dict[float, list[float]] = {}
    for path in sorted((root / run).glob("fold*/pruning.json")):
        for point in json.loads(path.read_text())["curve"]:
            by_fraction.setdefault(point["fraction"], []).append(100.0 * point["dice_WT"])
    return by_fraction


def render_seg_table(root: str | Path) -> tuple[str, str]:
    """Markdown and CSV of every ``<root>/<run>/fold<k>/metrics.json`` (runs = bundles)."""
    root = Path(root)
    results = collect(root)
    columns = _columns(results)
    header = ["model", "folds", *(title for _, title, _ in columns)]
    rows = []
    for run, folds in sorted(results.items()):
        stats = [mean_sd(_values(folds, key, scale)) for key, _, scale in columns]
        rows.append([run, str(len(folds)), *(format_mean_sd(stat) for stat in stats)])
    lines = ["## Segmentation (mean ± sd over folds)", "", "| " + " | ".join(header) + " |"]
    lines += ["|" + "---|" * len(header)] + ["| " + " | ".join(row) + " |" for row in rows]
    for run in sorted(results):
        curve = _pruning(root, run)
        if curve:
            lines += ["", f"## Pruning curve of {run}: whole-tumour Dice (%) against the fraction removed", ""]
            lines += ["| fraction | Dice WT |", "|---|---|"]
            lines += [
                f"| {fraction:.2f} | {format_mean_sd(mean_sd(values))} |" for fraction, values in sorted(curve.items())
            ]
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header, *rows])
    return "\n".join(lines) + "\n", buffer.getvalue()


def write_seg_table(root: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write ``seg_table.md`` and ``seg_table.csv`` (atomically) under ``out_dir`` (default ``root``)."""
    markdown, table = render_seg_table(root)
    out = Path(out_dir or root)
    write_text(out / "seg_table.csv", table)
    return write_text(out / "seg_table.md", markdown)


def run_seg_crossval(
    dataset_dir: str,
    bundles: Sequence[str] = ("proto_seg", "segresnet"),
    folds: Sequence[int] = (0, 1, 2, 3, 4),
    preset: str = "paper",
    output_dir: str = "outputs/seg_cv",
    prune: bool = False,
    bundles_dir: str | Path = DEFAULT_BUNDLES_DIR,
) -> Path:
    """Train and evaluate (and with ``prune`` prune) every bundle on every fold; write the table; return its path."""
    out = Path(output_dir).resolve()
    for bundle in bundles:
        bundle_root = Path(bundles_dir) / bundle
        for fold in folds:
            run_fold(ModelSpec(bundle, (), bundle), bundle_root, dataset_dir, fold, preset, out)
            pruning = out / bundle / f"fold{fold}" / "pruning.json"
            if prune and not pruning.is_file():
                configs = ["train.yaml", f"presets/{preset}.yaml", "prune.yaml"]
                overrides = {"dataset_dir": str(dataset_dir), "output_dir": str(out / bundle), "fold": fold}
                bundle_workflow(bundle_root, configs, **overrides).run()
    return write_seg_table(out)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir")
    parser.add_argument("--bundles", nargs="+", default=["proto_seg", "segresnet"])
    parser.add_argument("--folds", type=parse_folds, default=[0, 1, 2, 3, 4], help="e.g. 0-4, 0,2 or 3")
    parser.add_argument("--preset", default="paper", choices=["paper", "cpu_small"])
    parser.add_argument("--output_dir", default="outputs/seg_cv")
    parser.add_argument("--prune", action="store_true", help="also compute each fold's pruning curve")
    parser.add_argument("--table_only", action="store_true", help="only rebuild the table from --output_dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.table_only:
        table = write_seg_table(args.output_dir)
    elif not args.dataset_dir:
        parser.error("--dataset_dir is required unless --table_only")
    else:
        table = run_seg_crossval(args.dataset_dir, args.bundles, args.folds, args.preset, args.output_dir, args.prune)
    print(table.read_text())


if __name__ == "__main__":
    main()
