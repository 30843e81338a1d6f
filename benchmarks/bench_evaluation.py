"""Whole-fold evaluation time (issue 11 item 3): :class:`PrototypeEvaluator` with the bundle's metric handlers.

Configurations, timed on the same held-out cases (synthetic BraTS-like cases preprocessed once with the preset's
``eval_transforms`` and kept in memory, so data loading is not timed) and interleaved in one process:

- ``forward pass``: one no-grad eval-mode forward of every case in the validation batches (the floor);
- ``BAC+AP+ECE``: the evaluator with those handlers, evidence checks off;
- ``BAC+AP+ECE+IDS``: plus the IDS handler as ``evaluate.yaml`` attaches it (``predict: @network``, 50 steps);
- ``bundle (IDS + evidence checks + report)``: plus the per-case evidence checks and the report writer.

Each is reported in seconds per case and as a ratio to the forward pass in the same round. The cost of the IDS
is compared with the naive 51 single-case forwards per case (one single-case forward timed in every round).
The network is untrained E2 (costs do not depend on the weights; IDS reuse of tied deletion steps does a little).

Usage::

    python benchmarks/bench_evaluation.py --preset cpu_small --cases 16 --threads 1 --repeats 1

Results: ``benchmarks/results/evaluation.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from bench_common import PRESETS, RESULTS_DIR, interleaved, machine, preset_network, print_table, synthetic_cohort
from monai.data import DataLoader

from monai_protoshare.data.brats import load_brats_datalist
from monai_protoshare.data.transforms import eval_transforms
from monai_protoshare.engines import PrototypeEvaluator
from monai_protoshare.handlers import EvaluationReportHandler
from monai_protoshare.handlers.metric_handlers import (
    ActivationPrecision,
    BalancedAccuracy,
    ExpectedCalibrationError,
    IncrementalDeletion,
)
from monai_protoshare.io import write_json

COHORT_SPACING = {"cpu_small": 3.0, "paper": 1.5, "tiny": 6.0}  # the preset's pixdim: resampling costs little
VALIDATE_BATCH = 4  # evaluate.yaml's validate#dataloader


def evaluate(network, loader, ids: bool, evidence: bool, report_dir: Path | None) -> dict:
    """One evaluation run as the bundle builds it; returns ``state.metrics``."""
    handlers = [EvaluationReportHandler(report_dir)] if report_dir is not None else None
    evaluator = PrototypeEvaluator("cpu", loader, network, evidence_checks=evidence, val_handlers=handlers)
    BalancedAccuracy().attach(evaluator, "bac")
    ActivationPrecision().attach(evaluator, "ap")
    ExpectedCalibrationError().attach(evaluator, "ece")
    if ids:
        IncrementalDeletion(network).attach(evaluator, "ids")
    evaluator.run()
    return dict(evaluator.state.metrics)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu_small")
    parser.add_argument("--model", default="um_protoshare_e2")
    parser.add_argument("--cases", type=int, default=16, help="held-out cases")
    parser.add_argument("--repeats", type=int, default=1, help="timed rounds after one warm-up round")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "evaluation.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    cohort = synthetic_cohort(args.cases, COHORT_SPACING[args.preset])
    datalist = load_brats_datalist(cohort, cache=False)[: args.cases]
    transform = eval_transforms(preset["spatial_size"], preset["pixdim"], with_seg=True)
    start = time.perf_counter()
    items = [transform(dict(d)) for d in datalist]
    preprocess_s = (time.perf_counter() - start) / len(items)
    loader = DataLoader(items, batch_size=VALIDATE_BATCH, shuffle=False, num_workers=0)
    torch.manual_seed(0)
    network = preset_network(args.model, args.preset).to(memory_format=torch.channels_last_3d).eval()
    single = items[0]["image"].as_tensor()[None].contiguous(memory_format=torch.channels_last_3d)

    def forward_pass() -> None:
        with torch.no_grad():
            for batch in loader:
                network(batch["image"].as_tensor().contiguous(memory_format=torch.channels_last_3d))

    def single_forward() -> None:
        with torch.no_grad():
            network(single)

    with tempfile.TemporaryDirectory(prefix="bench_evaluation_") as tmp:
        runs = {
            "forward pass": forward_pass,
            "one single-case forward": single_forward,
            "BAC+AP+ECE": lambda: evaluate(network, loader, ids=False, evidence=False, report_dir=None),
            "BAC+AP+ECE+IDS": lambda: evaluate(network, loader, ids=True, evidence=False, report_dir=None),
            "bundle (IDS + evidence checks + report)": lambda: evaluate(
                network, loader, ids=True, evidence=True, report_dir=Path(tmp)
            ),
        }
        rows = interleaved(runs, args.repeats, reference="forward pass", label=f"[{args.preset}] ")
    n = len(items)
    by_name = {r["run"]: r for r in rows}
    t_single = by_name["one single-case forward"]["median_s"]
    ids_s = by_name["BAC+AP+ECE+IDS"]["median_s"] - by_name["BAC+AP+ECE"]["median_s"]
    for r in rows:
        r["per_case_s"] = r["median_s"] / (1 if r["run"] == "one single-case forward" else n)
    summary = {
        "ids_s_per_case": ids_s / n,
        "naive_ids_s_per_case": 51 * t_single,
        "ids_ratio_to_51_single_forwards": ids_s / n / (51 * t_single),
        "evidence_checks_s_per_case": (
            by_name["bundle (IDS + evidence checks + report)"]["median_s"] - by_name["BAC+AP+ECE+IDS"]["median_s"]
        )
        / n,
        "preprocess_s_per_case": preprocess_s,
    }
    entry = {
        "what": "PrototypeEvaluator over one held-out fold of in-memory preprocessed cases; ratio = median over rounds "
        "of the same-round time ratio to the forward pass",
        "preset": args.preset,
        "model": args.model,
        "cases": n,
        "batch_size": VALIDATE_BATCH,
        "repeats": args.repeats,
        "machine": machine(),
        "rows": rows,
        "summary": summary,
    }
    write_json(args.out, entry)
    print_table(
        rows,
        [
            ("run", "configuration", ""),
            ("median_s", "s", ".2f"),
            ("per_case_s", "s/case", ".3f"),
            ("ratio", "× pass", ".2f"),
        ],
        title=f"### evaluation of {n} held-out cases, {args.preset} {args.model}, batch {VALIDATE_BATCH}, "
        f"{args.threads} thread(s), median of {args.repeats}, load average {entry['machine']['load_average']}",
    )
    print(
        f"\nIDS {summary['ids_s_per_case']:.2f} s/case = {summary['ids_ratio_to_51_single_forwards']:.2f} × 51 single "
        f"forwards ({summary['naive_ids_s_per_case']:.2f} s); evidence checks {summary['evidence_checks_s_per_case']:.2f}"
        f" s/case; preprocessing (not timed above) {preprocess_s:.2f} s/case"
    )
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
