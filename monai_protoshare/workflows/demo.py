"""The README's main job: synthetic cohort → train UM-ProtoShare on one fold → evaluate → evidence → table.

``python -m monai_protoshare.workflows.demo`` (``make demo``) runs everything on the embedded synthetic
cohort with the ``cpu_small`` preset; ``--dataset_dir`` points it at a BraTS-2020 folder instead
(use ``--preset paper`` on a GPU for the paper's setting).

A single run is one draw: its table shows, beside each metric, the recorded reference mean ± sample sd over
cohort seeds and the machine that produced it (``docs/results/demo.json``, written by ``docs/write_numbers.py``),
when the reference was measured with this run's bundle, preset, fold and cohort. ``--seeds 0 1 2`` runs the demo
once per cohort seed into ``<output_dir>/seed<S>/`` (each with its own cohort in ``seed<S>/demo_cohort/``) and
prints one row per seed and their mean ± sample sd (also in ``<output_dir>/demo_seeds.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..data.synthetic import GENERATOR_VERSION, generate_cohort
from ..io import write_json
from .deterministic import reexec_deterministic
from .options import BundleOptionError, exit_on_option_error
from .run_info import save_run_info
from .table1 import sample_mean_sd

__all__ = [
    "DEFAULT_BUNDLES_DIR",
    "REFERENCE_FILE",
    "SUMMARY_METRICS",
    "bundle_workflow",
    "describe_machine",
    "format_statistic",
    "load_reference",
    "machine_info",
    "main",
    "run_demo",
    "run_demo_seeds",
    "seed_statistics",
    "value_statistics",
]

logger = logging.getLogger(__name__)

DEFAULT_BUNDLES_DIR = Path(__file__).resolve().parents[2] / "bundles"
#: cohort of the demo: enough cases, and enough LGG, that one held-out case does not decide BAC
DEMO_CASES, DEMO_LGG_FRACTION = 100, 0.4
#: generator version of the demo's cohort (3: SRI24 anatomy, no shortcut; a kept cohort of another version is
#: regenerated)
DEMO_VERSION = GENERATOR_VERSION
#: recorded demo runs over several cohort seeds (``docs/write_numbers.py demo``): the single run's reference
REFERENCE_FILE = Path(__file__).resolve().parents[2] / "docs" / "results" / "demo.json"
#: metrics of the demo's table: ``metrics.json`` key, label, format
SUMMARY_METRICS = (("bac", "BAC", "{:.3f}"), ("ap", "AP", "{:.3f}"), ("ids", "IDS (%)", "{:.2f}"))


def machine_info() -> dict:
    """The machine a run's numbers come from: CPU model (``/proc/cpuinfo``), logical CPUs, torch's thread count,
    ATen's CPU capability and the torch version."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
    }


def bundle_workflow(bundle_dir: str | Path, configs: Sequence[str], workflow_type: str = "train", **overrides):
    """An initialised ``monai.bundle.ConfigWorkflow`` of the bundle folder ``bundle_dir`` with config files
    ``configs`` and id overrides (a ``bundle_root`` override relocates the outputs, not the configs).

    Raises:
        BundleOptionError: a bad option, now or from the workflow's ``run``/``finalize``.
    """
    from .options import OptionCheckedWorkflow, raise_option_error

    bundle_dir = Path(bundle_dir)
    files = [str(bundle_dir / "configs" / c) for c in configs]
    overrides.setdefault("bundle_root", str(bundle_dir))
    workflow = OptionCheckedWorkflow(
        config_file=files,
        meta_file=str(bundle_dir / "configs" / "metadata.json"),
        logging_file=str(bundle_dir / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        **overrides,
    )
    workflow.initialize()
    parser = workflow.parser
    with raise_option_error():
        out = parser.get_parsed_content("fold_dir" if "fold_dir" in parser else "output_dir")
    save_run_info(out, config=parser.config, bundle=str(bundle_dir), configs=list(configs))
    return workflow


def _demo_cohort(path: Path, cases: int, seed: int) -> Path:
    """The synthetic cohort at ``path``, generated when absent or written differently (kept for later runs)."""
    info_file = path / "synthetic_cohort.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    wanted = {"version": DEMO_VERSION, "n_cases": cases, "seed": seed, "lgg_fraction": DEMO_LGG_FRACTION}
    if info and all(info.get(key) == value for key, value in wanted.items()):
        logger.info("using the synthetic cohort in %s", path)
        return path
    if info:
        logger.info("regenerating the synthetic cohort in %s: it was written with other settings", path)
    logger.info("generating a synthetic cohort of %d cases in %s", cases, path)
    return generate_cohort(path, n_cases=cases, seed=seed, lgg_fraction=DEMO_LGG_FRACTION, version=DEMO_VERSION)


def run_demo(
    dataset_dir: str | None = None,
    output_dir: str = "outputs/demo",
    preset: str = "cpu_small",
    fold: int = 0,
    cases: int = DEMO_CASES,
    seed: int = 0,
    bundle: str = "um_protoshare",
    bundles_dir: str | Path = DEFAULT_BUNDLES_DIR,
    evidence_cases: int = 2,
    cohort_dir: str | Path | None = None,
) -> dict:
    """Run the main job and return its summary (also written to ``<output_dir>/demo_summary.json``).

    The synthetic cohort (no ``dataset_dir``) of ``cases`` cases and cohort seed ``seed`` is kept in
    ``cohort_dir`` (default ``<output_dir>/../demo_cohort``); the model's training seed is the bundle's ``seed``.
    """
    start = time.perf_counter()
    out = Path(output_dir).resolve()
    bundle_root = Path(bundles_dir) / bundle
    if not (bundle_root / "configs" / "train.yaml").is_file():
        raise BundleOptionError("--bundle", f"'{bundle_root}' not found; run from a clone of the repository.")
    cohort = Path(cohort_dir) if cohort_dir else out.parent / "demo_cohort"
    data = Path(dataset_dir) if dataset_dir else _demo_cohort(cohort, cases, seed)
    # model_path None: the demo's weights stay in its fold folder, not in the bundle's models/model.pt
    overrides = {"dataset_dir": str(data), "output_dir": str(out), "fold": fold, "model_path": None}
    configs = ["train.yaml", f"presets/{preset}.yaml"]
    timings = {"train_s": _run_workflow(bundle_root, configs, overrides)[1]}
    evaluate, timings["evaluate_s"] = _run_workflow(bundle_root, configs + ["evaluate.yaml"], overrides)
    fold_dir = out / f"fold{fold}"
    metrics = json.loads((fold_dir / "metrics.json").read_text())

    t = time.perf_counter()
    evidence_dirs = _export_evidence(evaluate, fold_dir / "evidence", evidence_cases)
    timings["evidence_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - start

    summary = {
        "bundle": bundle,
        "preset": preset,
        "fold": fold,
        "dataset_dir": str(data),
        "cohort": None if dataset_dir else {"version": DEMO_VERSION, "n_cases": cases, "seed": seed},
        "metrics": {k: metrics.get(k) for k in ("bac", "ap", "ids", "ids_bac", "n")},
        "timings": timings,
        "machine": machine_info(),
        "outputs": {
            "fold_dir": str(fold_dir),
            "model": str(fold_dir / "checkpoints" / "model.pt"),
            "metrics": str(fold_dir / "metrics.json"),
            "predictions": str(fold_dir / "predictions.csv"),
            "evidence": [str(p) for p in evidence_dirs],
        },
    }
    write_json(out / "demo_summary.json", summary)
    return summary


def _run_workflow(bundle_root: Path, configs: list[str], overrides: dict):
    """Initialise, run and finalise one bundle workflow; returns it and the seconds it took."""
    t = time.perf_counter()
    workflow = bundle_workflow(bundle_root, configs, **overrides)
    workflow.run()
    workflow.finalize()
    return workflow, time.perf_counter() - t


def _export_evidence(evaluate, evidence_dir: Path, count: int) -> list[Path]:
    """Evidence for ``count`` held-out cases, one per grade first (filled in by the evidence export)."""
    from .export_evidence import export_for_workflow

    return export_for_workflow(evaluate, evidence_dir, count)


def run_demo_seeds(seeds: Sequence[int], output_dir: str = "outputs/demo", **kwargs) -> dict:
    """:func:`run_demo` once per cohort seed into ``<output_dir>/seed<S>/`` (cohort in ``seed<S>/demo_cohort``);
    returns and writes ``<output_dir>/demo_seeds.json``: the runs' summaries and :func:`seed_statistics`."""
    if len(set(seeds)) != len(seeds):
        raise BundleOptionError("--seeds", f"each cohort seed once; got {list(seeds)}.")
    summaries = []
    for seed in seeds:
        run_dir = Path(output_dir) / f"seed{seed}"
        logger.info("demo with cohort seed %d in %s", seed, run_dir)
        summaries.append(run_demo(output_dir=str(run_dir), seed=seed, cohort_dir=run_dir / "demo_cohort", **kwargs))
    result = {"seeds": list(seeds), "statistics": seed_statistics(summaries), "runs": summaries}
    (Path(output_dir) / "demo_seeds.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def value_statistics(values: Sequence[float]) -> dict:
    """``{"values", "mean", "sd", "n"}`` of repeated runs: mean and sample sd (ddof 1); ``sd`` None for fewer than
    two values, ``mean`` None for none."""
    stat = sample_mean_sd(list(values))
    mean, sd = (None, None) if stat is None else stat
    return {"values": list(values), "mean": mean, "sd": sd if len(values) > 1 else None, "n": len(values)}


def seed_statistics(summaries: Sequence[dict]) -> dict[str, dict]:
    """:func:`value_statistics` of each metric of :data:`SUMMARY_METRICS` over the summaries that have it."""
    return {
        key: value_statistics([s["metrics"][key] for s in summaries if s["metrics"].get(key) is not None])
        for key, _, _ in SUMMARY_METRICS
    }


def load_reference(summary: dict, path: str | Path = REFERENCE_FILE) -> dict | None:
    """The recorded reference of ``docs/write_numbers.py`` when it was measured with the summary's bundle, preset,
    fold and synthetic cohort (version and size), else None (also for a BraTS run or no record)."""
    path = Path(path)
    if not path.is_file() or not summary.get("cohort"):
        return None
    reference = json.loads(path.read_text())
    setting, cohort = reference.get("setting", {}), summary["cohort"]
    wanted = {
        "bundle": summary["bundle"],
        "preset": summary["preset"],
        "fold": summary["fold"],
        "cohort_version": cohort["version"],
        "n_cases": cohort["n_cases"],
    }
    return reference if all(setting.get(k) == v for k, v in wanted.items()) else None


def format_statistic(stat: dict, fmt: str) -> str:
    """``"0.750 ± 0.217"`` of a :func:`value_statistics` with the number format ``fmt``."""
    if not stat["n"]:
        return ""
    return f"{fmt.format(stat['mean'])} ± {'n/a' if stat['sd'] is None else fmt.format(stat['sd'])}"


def describe_machine(machine: dict) -> str:
    """``"AMD EPYC (2 logical CPUs, AVX512), 1 thread, torch 2.13.0+cpu"`` of a :func:`machine_info`."""
    threads = machine.get("threads")
    return (
        f"{machine.get('cpu')} ({machine.get('logical_cpus')} logical CPUs, {machine.get('cpu_capability')}), "
        f"{threads} thread{'' if threads == 1 else 's'}, torch {machine.get('torch')}"
    )


def _print_rows(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths, strict=True)).rstrip())


def _print_table(summary: dict, reference: dict | None = None) -> None:
    """The single run's metrics, beside the reference's mean ± sample sd over cohort seeds when there is one."""
    m, t = summary["metrics"], summary["timings"]
    stats = reference["statistics"] if reference else {}
    rows = [["metric", "this run", f"reference (mean ± sd, {len(reference['runs'])} seeds)" if reference else ""]]
    for key, label, fmt in SUMMARY_METRICS:
        value = "n/a" if m.get(key) is None else fmt.format(m[key])
        rows.append([label, value, format_statistic(stats[key], fmt) if key in stats else ""])
    wall = f"{t['total_s'] / 60:.1f} min (train {t['train_s'] / 60:.1f}, evaluate {t['evaluate_s'] / 60:.1f})"
    rows += [["held-out cases", str(m["n"]), ""], ["wall time", wall, ""]]
    print(f"\nUM-ProtoShare demo ({summary['preset']}, fold {summary['fold']}, {summary['dataset_dir']})")
    _print_rows(rows)
    print(f"this run: {describe_machine(summary['machine'])}")
    if reference:
        seeds = ", ".join(str(r["seed"]) for r in reference["runs"])
        print(
            f"reference: cohort seeds {seeds} on {describe_machine(reference['machine'])} "
            f"(docs/results/demo.json; a single run is one draw, see docs/reproducibility.md)"
        )
    print("outputs:")
    for name, path in summary["outputs"].items():
        print(f"  {name:<11} {path}")


def _print_seeds(result: dict) -> None:
    """One row per cohort seed, then the mean ± sample sd."""
    header = ["cohort seed", *(label for _, label, _ in SUMMARY_METRICS), "wall (min)"]
    rows = [header]
    for summary in result["runs"]:
        m = summary["metrics"]
        values = ["n/a" if m.get(key) is None else fmt.format(m[key]) for key, _, fmt in SUMMARY_METRICS]
        rows.append([str(summary["cohort"]["seed"]), *values, f"{summary['timings']['total_s'] / 60:.1f}"])
    stats = result["statistics"]
    rows.append(
        [
            "mean ± sd",
            *(format_statistic(stats[key], fmt) if key in stats else "" for key, _, fmt in SUMMARY_METRICS),
            "",
        ]
    )
    first = result["runs"][0]
    print(f"\nUM-ProtoShare demo over {len(result['runs'])} cohort seeds ({first['preset']}, fold {first['fold']})")
    _print_rows(rows)
    print(f"sd: sample sd (ddof 1); machine: {describe_machine(first['machine'])}")


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", help="BraTS-2020 training folder (default: a synthetic cohort)")
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--preset", default="cpu_small", choices=["cpu_small", "paper"])
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--cases", type=int, default=DEMO_CASES, help="synthetic cohort size")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed of the synthetic cohort")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="run once per cohort seed into <output_dir>/seed<S>/ and print mean ± sample sd (synthetic cohort only)",
    )
    parser.add_argument("--bundle", default="um_protoshare")
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="the same bits on any AVX2 machine: pinned CPU kernels, one thread (workflows/deterministic.py)",
    )
    args = parser.parse_args(argv)
    if args.deterministic:
        reexec_deterministic("monai_protoshare.workflows.demo", sys.argv[1:] if argv is None else list(argv))
    try:
        if args.seeds:
            if args.dataset_dir:
                raise BundleOptionError("--seeds", "repeats the synthetic cohort's seeds; leave out --dataset_dir.")
            result = run_demo_seeds(
                args.seeds, args.output_dir, preset=args.preset, fold=args.fold, cases=args.cases, bundle=args.bundle
            )
            _print_seeds(result)
            return result
        summary = run_demo(
            args.dataset_dir, args.output_dir, args.preset, args.fold, args.cases, args.seed, args.bundle
        )
    except BundleOptionError as err:
        exit_on_option_error(err)
    _print_table(summary, load_reference(summary))
    return summary


if __name__ == "__main__":
    main()
