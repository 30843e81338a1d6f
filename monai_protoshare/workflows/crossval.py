"""Five-fold cross-validation of bundles and ablations, then the Table-1 report.

``python -m monai_protoshare.workflows.crossval --dataset_dir D --models um_protoshare um_protoshare:C cnn cnn:occlusion``

A model spec is ``<bundle>`` or ``<bundle>:<variant>``, the variant an ablation of ``um_protoshare``
(``A1 A2 B C D E1 E2 E3``; E2 is the bundle's default), ``fine`` for ``um_protoshare``, ``mprotonet`` and
``fpn_iaia_bl`` (the fine-annotation loss, ``configs/ablations/fine.yaml``: uses tumour masks in training), or
``occlusion`` / ``gradcampp`` for the ``cnn`` (re-uses the CNN's checkpoints, evaluates with occlusion or Grad-CAM++
instead of Grad-CAM). Every fold gets a fresh model and its own
folder ``<output_dir>/<run>/fold<k>/``. Finished work is skipped: a fold whose ``checkpoints/model.pt``
exists is not retrained, one with ``metrics.json`` is not re-evaluated, and an interrupted training
resumes from its last epoch. A spec may carry its own folds (``mprotonet@0-4``; the others get ``--folds``);
``--table1`` runs every row of the synthetic Table 1 (:data:`TABLE1_PLAN`: 5 folds for E2 and MProtoNet, 3 for the
others). ``--jobs N`` runs N folds at once in worker processes, each with ``cpus // N`` threads (on one GPU the
small presets leave it mostly idle, so several folds share it well); evaluation-only specs wait for the trainings
whose checkpoints they read. Each fold's ``timing.json`` records its training and evaluation time, and
``<output_dir>/crossval_wall.json`` the wall time of the run. To spread folds over GPUs or nodes, start one runner
per fold (``--folds 3``, with ``CUDA_VISIBLE_DEVICES`` or a scheduler array job) on a shared ``--output_dir``,
then ``python -m monai_protoshare.workflows.table1 --root <output_dir>``.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io import write_json
from .demo import DEFAULT_BUNDLES_DIR, bundle_workflow
from .options import BundleOptionError, exit_on_option_error
from .run_info import save_run_info
from .table1 import write_table

__all__ = [
    "TABLE1_PLAN",
    "ModelSpec",
    "describe_plan",
    "main",
    "parse_folds",
    "parse_model_spec",
    "parse_run",
    "run_crossval",
    "run_fold",
]

logger = logging.getLogger(__name__)

UM_ABLATIONS = ("A1", "A2", "B", "C", "D", "E1", "E2", "E3")
#: bundles with ``configs/ablations/fine.yaml`` (the fine-annotation loss of FPN-IAIA-BL, eq. 5)
FINE_BUNDLES = ("um_protoshare", "mprotonet", "fpn_iaia_bl")
#: the CNN's other attribution methods: an evaluation-only config over the CNN's checkpoints
CNN_ATTRIBUTION_VARIANTS = ("occlusion", "gradcampp")
#: every row of the synthetic Table 1 (issue 20): E2 and MProtoNet on 5 folds, every other row on 3
TABLE1_PLAN = (
    "um_protoshare@0-4",
    "mprotonet@0-4",
    *(f"um_protoshare:{a}@0-2" for a in ("A1", "A2", "B", "C", "D", "E1", "E3")),
    *(f"{b}@0-2" for b in ("cnn", "cnn:occlusion", "cnn:gradcampp", "protopnet", "xprotonet", "maprotonet")),
    "fpn_iaia_bl@0-2",
    *(f"{b}:fine@0-2" for b in FINE_BUNDLES),
)


@dataclass(frozen=True)
class ModelSpec:
    """A bundle, its extra config files, the run folder name, whether it trains, and its evaluation-only configs."""

    bundle: str
    extra_configs: tuple[str, ...]
    run: str
    trains: bool = True
    run_of_checkpoints: str | None = None
    eval_configs: tuple[str, ...] = ()


def parse_model_spec(spec: str) -> ModelSpec:
    """``um_protoshare``, ``um_protoshare:C``, ``cnn:occlusion``, ``mprotonet`` … -> :class:`ModelSpec`."""
    bundle, _, variant = spec.partition(":")
    if not variant or (bundle == "um_protoshare" and variant.upper() == "E2"):
        return ModelSpec(bundle, (), bundle)
    if bundle == "um_protoshare" and variant.upper() in UM_ABLATIONS:
        return ModelSpec(bundle, (f"ablations/{variant.upper()}.yaml",), f"um_protoshare_{variant.upper()}")
    if bundle in FINE_BUNDLES and variant == "fine":
        return ModelSpec(bundle, ("ablations/fine.yaml",), f"{bundle}_fine")
    if bundle == "cnn" and variant in CNN_ATTRIBUTION_VARIANTS:
        return ModelSpec("cnn", (), f"cnn_{variant}", False, "cnn", (f"{variant}.yaml",))
    raise ValueError(
        f"unknown model spec {spec!r}: use <bundle>, um_protoshare:<{'|'.join(UM_ABLATIONS)}>, "
        f"<{'|'.join(FINE_BUNDLES)}>:fine or cnn:<{'|'.join(CNN_ATTRIBUTION_VARIANTS)}>."
    )


def run_crossval(
    dataset_dir: str,
    models: Sequence[str],
    folds: Sequence[int] = (0, 1, 2, 3, 4),
    preset: str = "paper",
    output_dir: str = "outputs/cv",
    bundles_dir: str | Path = DEFAULT_BUNDLES_DIR,
    jobs: int = 1,
) -> Path:
    """Train and evaluate every model spec (``<spec>[@folds]``) on its folds, ``jobs`` folds at a time; write
    ``table1.md``/``table1.csv``; return the table."""
    start = time.perf_counter()
    out = Path(output_dir).resolve()
    save_run_info(out, models=list(models), folds=list(folds), preset=preset, dataset_dir=str(dataset_dir), jobs=jobs)
    runs = [parse_run(m, folds) for m in models]
    # trainings first: an evaluation-only spec reads the checkpoints of another spec's trainings
    phases = [
        [(s, f) for s, fs in runs for f in fs if s.trains],
        [(s, f) for s, fs in runs for f in fs if not s.trains],
    ]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    for phase in phases:
        tasks = [(spec, Path(bundles_dir) / spec.bundle, str(dataset_dir), fold, preset, out) for spec, fold in phase]
        if jobs == 1:
            for task in tasks:
                run_fold(*task)
            continue
        context = multiprocessing.get_context("spawn")  # no forked torch thread pools
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
            for future in [pool.submit(run_fold, *task) for task in tasks]:
                future.result()  # re-raises a worker's error here
    write_json(out / "crossval_wall.json", {"wall_s": time.perf_counter() - start, "jobs": jobs, "threads": threads})
    md, _ = write_table(out)
    logger.info("Table 1 written to %s", md)
    return md


def describe_plan(
    models: Sequence[str], folds: Sequence[int], preset: str, output_dir: str, bundles_dir: str | Path
) -> list[str]:
    """One line per (spec, fold) saying what :func:`run_crossval` would do there now; raises
    :class:`BundleOptionError` for a spec whose bundle or preset file is missing (``--dry_run``)."""
    out, lines = Path(output_dir).resolve(), []
    for text in models:
        spec, spec_folds = parse_run(text, folds)
        configs = Path(bundles_dir) / spec.bundle / "configs"
        for name in ("train.yaml", f"presets/{preset}.yaml", *spec.extra_configs, *spec.eval_configs):
            if not (configs / name).is_file():
                raise BundleOptionError("--models", f"{text}: '{configs / name}' not found.")
        for fold in spec_folds:
            model = out / (spec.run_of_checkpoints or spec.run) / f"fold{fold}" / "checkpoints" / "model.pt"
            if (out / spec.run / f"fold{fold}" / "metrics.json").is_file():
                action = "done (re-evaluated only if its model is newer)"
            elif spec.trains and not model.is_file():
                action = "train + evaluate"
            else:
                action = f"evaluate ({spec.run_of_checkpoints or spec.run}'s checkpoint)"
            lines.append(f"{spec.run} fold {fold}: {action}")
    return lines


def _init_worker(threads: int) -> None:
    """A cross-validation worker process: ``threads`` intra-op threads, INFO logging with the process id."""
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(process)d] %(name)s %(levelname)s %(message)s")


def parse_run(text: str, default_folds: Sequence[int]) -> tuple[ModelSpec, list[int]]:
    """``mprotonet@0-4`` -> (spec, [0..4]); a spec without ``@`` gets ``default_folds``."""
    spec, _, folds = text.partition("@")
    return parse_model_spec(spec), parse_folds(folds) if folds else list(default_folds)


def run_fold(spec: ModelSpec, bundle_root: Path, dataset_dir: str, fold: int, preset: str, out: Path) -> None:
    """Train (unless finished) and evaluate one fold of ``spec`` into ``out/<run>/fold<k>/``; finished work is skipped."""
    checkpoint_run = out / (spec.run_of_checkpoints or spec.run)
    configs = ["train.yaml", f"presets/{preset}.yaml", *spec.extra_configs]
    # model_path None: each fold keeps its own checkpoints/model.pt; none overwrites the bundle's models/model.pt
    overrides = {"dataset_dir": str(dataset_dir), "output_dir": str(checkpoint_run), "fold": fold, "model_path": None}
    model = checkpoint_run / f"fold{fold}" / "checkpoints" / "model.pt"
    fold_dir = out / spec.run / f"fold{fold}"
    timing_file = fold_dir / "timing.json"
    if spec.trains and not model.is_file():
        logger.info("training %s fold %d", spec.run, fold)
        start = time.perf_counter()
        workflow = bundle_workflow(bundle_root, configs, **overrides)
        workflow.run()
        workflow.finalize()
        _record_time(timing_file, train_s=time.perf_counter() - start)
    metrics = fold_dir / "metrics.json"
    if metrics.is_file() and metrics.stat().st_mtime >= model.stat().st_mtime:
        logger.info("%s fold %d already evaluated", spec.run, fold)
        return
    logger.info("evaluating %s fold %d", spec.run, fold)
    start = time.perf_counter()
    eval_configs = configs + ["evaluate.yaml", *spec.eval_configs]
    eval_overrides = dict(overrides)
    if spec.run_of_checkpoints:
        eval_overrides["fold_dir"] = str(fold_dir)
    workflow = bundle_workflow(bundle_root, eval_configs, **eval_overrides)
    workflow.run()
    workflow.finalize()
    _record_time(timing_file, evaluate_s=time.perf_counter() - start)


def _record_time(path: Path, **seconds: float) -> None:
    """Merge ``seconds`` (``train_s``, ``evaluate_s``) and the thread count into the fold's ``timing.json``."""
    record = {"train_s": 0.0, "evaluate_s": 0.0, **(json.loads(path.read_text()) if path.is_file() else {})}
    write_json(path, {**record, **seconds, "threads": torch.get_num_threads()})


def parse_folds(text: str) -> list[int]:
    """``0-4``, ``0,2,3`` or ``3``."""
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(v) for v in text.split(",")]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--models", nargs="+", default=["um_protoshare"], help="specs, each optionally @folds")
    parser.add_argument("--table1", action="store_true", help="every Table-1 row with its folds (TABLE1_PLAN)")
    parser.add_argument("--folds", type=parse_folds, default=[0, 1, 2, 3, 4], help="e.g. 0-4, 0,2 or 3")
    parser.add_argument("--preset", default="paper", choices=["paper", "cpu_small"])
    parser.add_argument("--output_dir", default="outputs/cv")
    parser.add_argument("--jobs", type=int, default=1, help="folds run at once in worker processes")
    parser.add_argument("--dry_run", action="store_true", help="print what would run (and check the files), no more")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.jobs < 1:
        parser.error(f"--jobs: must be at least 1; got {args.jobs}.")
    models = list(TABLE1_PLAN) if args.table1 else args.models
    try:
        if args.dry_run:
            lines = describe_plan(models, args.folds, args.preset, args.output_dir, DEFAULT_BUNDLES_DIR)
            print("\n".join(lines) + f"\n{len(lines)} folds, {args.jobs} at a time, into {args.output_dir}")
            return
        table = run_crossval(args.dataset_dir, models, args.folds, args.preset, args.output_dir, jobs=args.jobs)
    except BundleOptionError as err:
        exit_on_option_error(err)
    print(table.read_text())


if __name__ == "__main__":
    main()
