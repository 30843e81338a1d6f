"""The README's main job: synthetic cohort → train UM-ProtoShare on one fold → evaluate → evidence → table.

``python -m monai_protoshare.workflows.demo`` (``make demo``) runs everything on the embedded synthetic
cohort with the ``cpu_small`` preset; ``--dataset_dir`` points it at a BraTS-2020 folder instead
(use ``--preset paper`` on a GPU for the paper's setting).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..data.synthetic import GENERATOR_VERSION, generate_cohort
from .deterministic import reexec_deterministic
from .options import BundleOptionError, exit_on_option_error
from .run_info import save_run_info

__all__ = ["DEFAULT_BUNDLES_DIR", "bundle_workflow", "main", "run_demo"]

logger = logging.getLogger(__name__)

DEFAULT_BUNDLES_DIR = Path(__file__).resolve().parents[2] / "bundles"
#: cohort of the demo: enough cases, and enough LGG, that one held-out case does not decide BAC
DEMO_CASES, DEMO_LGG_FRACTION = 100, 0.4
#: generator version of the demo's cohort (3: SRI24 anatomy, no shortcut; a kept cohort of another version is
#: regenerated)
DEMO_VERSION = GENERATOR_VERSION


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
) -> dict:
    """Run the main job and return its summary (also written to ``<output_dir>/demo_summary.json``)."""
    start = time.perf_counter()
    out = Path(output_dir).resolve()
    bundle_root = Path(bundles_dir) / bundle
    if not (bundle_root / "configs" / "train.yaml").is_file():
        raise BundleOptionError("--bundle", f"'{bundle_root}' not found; run from a clone of the repository.")
    data = Path(dataset_dir) if dataset_dir else _demo_cohort(out.parent / "demo_cohort", cases, seed)
    overrides = {"dataset_dir": str(data), "output_dir": str(out), "fold": fold}
    configs = ["train.yaml", f"presets/{preset}.yaml"]
    timings = {}

    t = time.perf_counter()
    train = bundle_workflow(bundle_root, configs, **overrides)
    train.run()
    train.finalize()
    timings["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    evaluate = bundle_workflow(bundle_root, configs + ["evaluate.yaml"], **overrides)
    evaluate.run()
    evaluate.finalize()
    timings["evaluate_s"] = time.perf_counter() - t
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
        "metrics": {k: metrics.get(k) for k in ("bac", "ap", "ids", "ids_bac", "n")},
        "timings": timings,
        "outputs": {
            "fold_dir": str(fold_dir),
            "model": str(fold_dir / "checkpoints" / "model.pt"),
            "metrics": str(fold_dir / "metrics.json"),
            "predictions": str(fold_dir / "predictions.csv"),
            "evidence": [str(p) for p in evidence_dirs],
        },
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _export_evidence(evaluate, evidence_dir: Path, count: int) -> list[Path]:
    """Evidence for ``count`` held-out cases, one per grade first (filled in by the evidence export)."""
    from .export_evidence import export_for_workflow

    return export_for_workflow(evaluate, evidence_dir, count)


def _print_table(summary: dict) -> None:
    m, t = summary["metrics"], summary["timings"]
    rows = [
        ("BAC", f"{m['bac']:.3f}"),
        ("AP", f"{m['ap']:.3f}"),
        ("IDS (%)", f"{m['ids']:.2f}"),
        ("held-out cases", str(m["n"])),
        (
            "wall time",
            f"{t['total_s'] / 60:.1f} min (train {t['train_s'] / 60:.1f}, evaluate {t['evaluate_s'] / 60:.1f})",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\nUM-ProtoShare demo ({summary['preset']}, fold {summary['fold']}, {summary['dataset_dir']})")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print("outputs:")
    for name, path in summary["outputs"].items():
        print(f"  {name:<11} {path}")


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", help="BraTS-2020 training folder (default: a synthetic cohort)")
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--preset", default="cpu_small", choices=["cpu_small", "paper"])
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--cases", type=int, default=DEMO_CASES, help="synthetic cohort size")
    parser.add_argument("--seed", type=int, default=0)
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
        summary = run_demo(
            args.dataset_dir, args.output_dir, args.preset, args.fold, args.cases, args.seed, args.bundle
        )
    except BundleOptionError as err:
        exit_on_option_error(err)
    _print_table(summary)
    return summary


if __name__ == "__main__":
    main()
