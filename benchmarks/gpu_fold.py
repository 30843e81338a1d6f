"""One fold of UM-ProtoShare E2 at the ``paper`` size, end to end on a paper-size synthetic cohort, timed by phase,
and the wall time of 5 folds of App. D.5's schedule extrapolated from it (issue 25 item 4; run by
``benchmarks/gpu_check.sh --fold``).

Phases, each timed on its own (device-synchronised):

1. ``generation``: a synthetic cohort of ``--cases`` cases (369, the BraTS-2020 release) at 1.5 mm, written by
   ``--processes`` parallel :func:`generate_cohort` calls with seeds ``seed, seed + 1, ...`` and merged into one
   BraTS-layout folder of symbolic links (each call's cases are distinct, so every merged case is); kept under
   ``--cohort-dir`` for later runs. Once per cohort, not per fold: outside the extrapolation.
2. ``setup``: the bundle's train workflow (``configs/train.yaml`` + ``presets/paper.yaml``) parsed, the fold split,
   the cached training and push datasets (preprocessing of every training case) and the network built.
3. ``warmup``, ``latent``, ``push``, ``classifier``: the trainer's epochs of each stage (data loading included;
   the time waiting for batches is reported as ``data_wait``), and the pushes.
4. ``evaluation``: the bundle's evaluate workflow on the held-out cases (BAC, AP, IDS, checks).

Speed settings: bf16 autocast on CUDA (the bundle's ``amp``), ``channels_last_3d`` (the trainer's default),
``--compile`` (``nn.Module.compile`` of the backbone, add-ons and mapping heads: the parameter names and
checkpoints are unchanged), and ``--push-on-device`` (the un-augmented push batches held on the device after
the first push instead of reloaded and copied at every push; the augmented training batches stay on the CPU
workers). A run may shorten the schedule (``--epochs W,L,P,C``); the extrapolation uses the per-epoch times:

    fold = setup + W·t_warmup + L·t_latent + ceil(L / P)·(t_push + C·t_classifier) + evaluation

with App. D.5's W, L, P, C = 50, 100, 10, 10 and each t the median over the measured epochs of that stage after
the first (which pays for autotuning and compilation) when there are several; 5 folds = 5 × fold.

Usage::

    python benchmarks/gpu_fold.py                         # CUDA: the full fold (App. D.5 schedule)
    python benchmarks/gpu_fold.py --epochs 3,4,2,1        # CUDA: a short fold, extrapolated
    python benchmarks/gpu_fold.py --dry-run               # CPU, tiny sizes, few steps: the same code path

Results: ``benchmarks/results/gpu_fold.json`` (``--out``), and the tables on stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from bench_common import BUNDLE_DIR, RESULTS_DIR, SCRATCH_DIR, machine, print_table, synchronize
from ignite.engine import Events

from monai_protoshare.data.brats import NAME_MAPPING, NAME_MAPPING_COLUMNS
from monai_protoshare.data.synthetic import GENERATOR_VERSION, generate_cohort
from monai_protoshare.data.synthetic_common import subject_id
from monai_protoshare.engines import TrainingSchedule
from monai_protoshare.engines.schedule import Stage
from monai_protoshare.io import write_json
from monai_protoshare.workflows.demo import bundle_workflow

PAPER_SCHEDULE = TrainingSchedule()  # App. D.5: W, L, P, C = 50, 100, 10, 10
FOLDS = 5
SEQUENCE_FILES = ("t1", "t1ce", "t2", "flair", "seg")
#: the dry run: the bundle at a tiny size (the ``tiny`` network of bench_common), 10 cases in 2 folds, 1-2 epochs a stage
DRY_RUN = {
    "cases": 10,
    "spacing": 6.0,
    "processes": 1,
    "epochs": (1, 2, 1, 1),
    "overrides": {
        "spatial_size": [32, 32, 24],
        "pixdim": 6.0,
        "encoder_layers": [1, 1],
        "encoder_widths": [4, 8],
        "embedding_dim": 8,
        "batch_size": 2,
        "num_workers": 0,
        "n_folds": 2,
    },
}


# ------------------------------------------------------------------ phase 1: the cohort
def _part(args: tuple[Path, int, int, float]) -> Path:
    out, n, seed, spacing = args
    return generate_cohort(out, n_cases=n, seed=seed, spacing=spacing, progress=False)


def make_cohort(root: Path, cases: int, spacing: float, seed: int, processes: int) -> Path:
    """A BraTS-layout cohort of ``cases`` distinct synthetic cases at ``spacing`` mm in ``root``/``merged``.

    ``processes`` :func:`generate_cohort` calls of ``ceil(cases / processes)`` cases each (seeds ``seed + j``)
    run in parallel; the merged folder links their files under the ids ``BraTS20_Training_001...``. A merged
    folder already written for the same parameters is reused.
    """
    merged = root / "merged"
    wanted = {"cases": cases, "spacing": spacing, "seed": seed, "processes": processes, "version": GENERATOR_VERSION}
    info_file = merged / "gpu_fold_cohort.json"
    if info_file.is_file() and json.loads(info_file.read_text()) == wanted:
        return merged
    per_part = math.ceil(cases / processes)
    jobs = [(root / f"part{j}", per_part, seed + j, spacing) for j in range(processes)]
    if processes == 1:
        parts = [_part(jobs[0])]
    else:
        with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
            parts = list(pool.map(_part, jobs))
    merged.mkdir(parents=True, exist_ok=True)
    rows = []
    for part in parts:
        with open(part / NAME_MAPPING, newline="") as f:
            rows += [(row[NAME_MAPPING_COLUMNS[0]], row[NAME_MAPPING_COLUMNS[-1]], part) for row in csv.DictReader(f)]
    with open(merged / NAME_MAPPING, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(NAME_MAPPING_COLUMNS)
        for i, (grade, old_id, part) in enumerate(rows[:cases]):
            new_id = subject_id(i, max(3, len(str(cases))))
            folder = merged / new_id
            folder.mkdir(exist_ok=True)
            for name in SEQUENCE_FILES:
                link = folder / f"{new_id}_{name}.nii.gz"
                link.unlink(missing_ok=True)
                link.symlink_to((part / old_id / f"{old_id}_{name}.nii.gz").resolve())
            writer.writerow([grade, "NA", "NA", "NA", "NA", new_id])
    write_json(info_file, wanted)
    return merged


# ------------------------------------------------------------------ phases 3: the trainer's epochs
class PhaseTimer:
    """Seconds of every epoch per stage (push excluded), of every push, and of the waits for batches."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.epochs: dict[str, list[float]] = {s.value: [] for s in Stage}
        self.data_wait: dict[str, float] = {s.value: 0.0 for s in Stage}
        self.pushes: list[float] = []

    def attach(self, trainer) -> None:
        trainer.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)  # after the trainer's push
        trainer.add_event_handler(Events.GET_BATCH_STARTED, self._batch_started)
        trainer.add_event_handler(Events.GET_BATCH_COMPLETED, self._batch_completed)

    def _epoch_started(self, engine) -> None:
        synchronize(self.device)
        self._epoch_start = time.perf_counter()

    def _epoch_completed(self, engine) -> None:
        synchronize(self.device)
        seconds = time.perf_counter() - self._epoch_start
        if engine.schedule.push_after(engine.state.epoch):
            self.pushes.append(engine.state.push_seconds)
            seconds -= engine.state.push_seconds
        self.epochs[engine.state.stage.value].append(seconds)

    def _batch_started(self, engine) -> None:
        self._batch_start = time.perf_counter()

    def _batch_completed(self, engine) -> None:
        self.data_wait[engine.state.stage.value] += time.perf_counter() - self._batch_start


def _steady(times: list[float]) -> float:
    """Median of the epochs after the first (autotuning, compilation), or the only one."""
    return statistics.median(times[1:] if len(times) > 1 else times)


def extrapolate(phases: dict[str, Any], schedule: TrainingSchedule = PAPER_SCHEDULE) -> dict[str, Any]:
    """One fold and ``FOLDS`` folds of ``schedule`` from the measured phases (see the module docstring)."""
    t = {stage: _steady(phases["epochs"][stage]) for stage in ("warmup", "latent", "classifier")}
    push = _steady(phases["pushes"])
    terms = {
        "setup": phases["setup_s"],
        "warmup": schedule.warmup_epochs * t["warmup"],
        "latent": schedule.latent_epochs * t["latent"],
        "push": schedule.num_blocks * push,
        "classifier": schedule.num_blocks * schedule.classifier_epochs * t["classifier"],
        "evaluation": phases["evaluation_s"],
    }
    fold = sum(terms.values())
    formula = (
        f"fold = setup {phases['setup_s']:.1f} + {schedule.warmup_epochs} x {t['warmup']:.2f} + "
        f"{schedule.latent_epochs} x {t['latent']:.2f} + {schedule.num_blocks} x ({push:.2f} + "
        f"{schedule.classifier_epochs} x {t['classifier']:.2f}) + evaluation {phases['evaluation_s']:.1f} s "
        f"= {fold:.0f} s; {FOLDS} folds = {FOLDS * fold / 3600:.3f} h"
    )
    return {
        "per_epoch_s": t,
        "push_s": push,
        "terms_s": terms,
        "fold_s": fold,
        "folds_h": FOLDS * fold / 3600,
        "formula": formula,
    }


# ------------------------------------------------------------------ the run
def compile_heads(network: torch.nn.Module) -> None:
    """``nn.Module.compile`` of the backbone, add-ons and mapping heads (state-dict names unchanged)."""
    modules = [network.backbone, *network.add_ons, *(network.mapping_heads or [])]
    for module in modules:
        module.compile()


def run_fold(args, device: torch.device) -> dict[str, Any]:
    start = time.perf_counter()
    phases: dict[str, Any] = {}
    cohort = make_cohort(args.cohort_dir, args.cases, args.spacing, args.seed, args.processes)
    phases["generation_s"] = time.perf_counter() - start
    print(f"cohort: {args.cases} cases at {args.spacing} mm in {cohort} ({phases['generation_s']:.1f} s)", flush=True)
    warmup, latent, interval, classifier = args.epochs
    overrides = {
        "dataset_dir": str(cohort),
        "output_dir": str(args.output_dir),
        "fold": 0,
        "resume": False,
        "model_path": None,  # the fold's weights stay in output_dir, not in the bundle's models/model.pt
        "pretrained": None,  # costs do not depend on the weights; the GPU machine has no ImageNet file
        "warmup_epochs": warmup,
        "latent_epochs": latent,
        "push_interval": interval,
        "classifier_epochs": classifier,
        "lr_warmup_epochs": min(20, latent),
        "device": device,
        "amp": device.type == "cuda" and not args.no_amp,
        **({"num_workers": args.num_workers} if args.num_workers is not None else {}),
        **args.overrides,
    }
    configs = ["train.yaml", "presets/paper.yaml"]
    t = time.perf_counter()
    train = bundle_workflow(BUNDLE_DIR, configs, **overrides)
    trainer = train.parser.get_parsed_content("train#trainer")  # builds the datasets (caching) and the network
    if args.compile:
        compile_heads(trainer.network)
    timer = PhaseTimer(device)
    timer.attach(trainer)
    if args.push_on_device:
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), _push_batches_to_device)
    synchronize(device)
    phases["setup_s"] = time.perf_counter() - t
    print(f"setup: {phases['setup_s']:.1f} s; training {trainer.schedule}", flush=True)
    t = time.perf_counter()
    train.run()
    train.finalize()
    synchronize(device)
    phases["training_s"] = time.perf_counter() - t
    phases["epochs"], phases["pushes"], phases["data_wait_s"] = timer.epochs, timer.pushes, timer.data_wait
    t = time.perf_counter()
    evaluate = bundle_workflow(BUNDLE_DIR, configs + ["evaluate.yaml"], **overrides)
    evaluate.run()
    evaluate.finalize()
    synchronize(device)
    phases["evaluation_s"] = time.perf_counter() - t
    phases["total_s"] = time.perf_counter() - start
    metrics_file = Path(args.output_dir) / "fold0" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    phases["metrics"] = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    return phases


def _push_batches_to_device(engine) -> None:
    """After the first epoch: the push loader's batches (un-augmented, the same at every push) on the device."""
    device = engine.state.device
    engine.push_data_loader = [
        {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        for batch in engine.push_data_loader
    ]


def print_report(result: dict[str, Any]) -> None:
    phases, est = result["phases"], result["extrapolation"]
    rows = [
        {"phase": "generation (once per cohort)", "s": phases["generation_s"]},
        {"phase": "setup (datalist, caching, network)", "s": phases["setup_s"]},
    ]
    for stage in ("warmup", "latent", "classifier"):
        times = phases["epochs"][stage]
        rows.append(
            {
                "phase": f"{stage}: {len(times)} epochs",
                "s": sum(times),
                "per": est["per_epoch_s"][stage],
                "wait": phases["data_wait_s"][stage],
            }
        )
    rows.append({"phase": f"push: {len(phases['pushes'])}", "s": sum(phases["pushes"]), "per": est["push_s"]})
    rows.append({"phase": "evaluation", "s": phases["evaluation_s"]})
    rows.append({"phase": "total", "s": phases["total_s"]})
    print_table(
        rows,
        [
            ("phase", "phase", ""),
            ("s", "s", ".1f"),
            ("per", "per epoch (steady) s", ".2f"),
            ("wait", "waiting for data s", ".1f"),
        ],
        title=f"### {result['machine']['device_name']}",
    )
    print(f"\nmetrics: {phases['metrics']}")
    print(f"\nextrapolation to {FOLDS} folds of App. D.5: {est['formula']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=369, help="cohort size (369: BraTS 2020)")
    parser.add_argument("--spacing", type=float, default=1.5, help="cohort voxel size in mm (the paper's grid)")
    parser.add_argument("--processes", type=int, default=8, help="parallel cohort generators")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--epochs",
        default=None,
        help="W,L,P,C: warm-up, stage-1 epochs, push interval, stage-3 "
        "epochs per push (default App. D.5's 50,100,10,10)",
    )
    parser.add_argument("--num-workers", type=int, help="data loader workers (default: the bundle's)")
    parser.add_argument("--compile", action="store_true", help="nn.Module.compile of backbone and heads")
    parser.add_argument("--push-on-device", action="store_true", help="keep the push batches on the device")
    parser.add_argument("--no-amp", action="store_true", help="fp32 on CUDA (default: bf16 autocast)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, 1-2 epochs a stage: the code path")
    parser.add_argument("--cohort-dir", type=Path, help=f"cohort folder (default under {SCRATCH_DIR})")
    parser.add_argument("--output-dir", type=Path, help="bundle outputs (default under the scratch folder)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "gpu_fold.json")
    args = parser.parse_args(argv)
    args.overrides = {}
    if args.dry_run:
        args.device, args.cases, args.spacing = "cpu", DRY_RUN["cases"], DRY_RUN["spacing"]
        args.processes, args.overrides = DRY_RUN["processes"], DRY_RUN["overrides"]
        args.epochs = args.epochs or ",".join(map(str, DRY_RUN["epochs"]))
    epochs = args.epochs or ",".join(
        str(v)
        for v in (
            PAPER_SCHEDULE.warmup_epochs,
            PAPER_SCHEDULE.latent_epochs,
            PAPER_SCHEDULE.push_interval,
            PAPER_SCHEDULE.classifier_epochs,
        )
    )
    try:
        args.epochs = tuple(int(v) for v in epochs.split(","))
        TrainingSchedule(*args.epochs)
    except (TypeError, ValueError) as err:
        parser.error(f"--epochs takes W,L,P,C (four integers, L >= 1); got {epochs!r}: {err}")
    if len(args.epochs) != 4 or args.epochs[1] < 1:
        parser.error(f"--epochs takes W,L,P,C with L >= 1 (a push is timed); got {epochs!r}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_fold: no CUDA device is visible to torch; use --dry-run to check the logic on CPU.", file=sys.stderr)
        return 3
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    tag = f"{args.cases}cases_{args.spacing:g}mm_seed{args.seed}_v{GENERATOR_VERSION}"
    args.cohort_dir = args.cohort_dir or SCRATCH_DIR / f"gpu_fold_cohort_{tag}"
    args.output_dir = args.output_dir or SCRATCH_DIR / ("gpu_fold_dry_run" if args.dry_run else "gpu_fold_outputs")
    print(
        f"plan: {args.cases} cases at {args.spacing} mm, schedule W,L,P,C = {args.epochs}, device {device}, "
        f"amp {device.type == 'cuda' and not args.no_amp}, compile {args.compile}, push on device "
        f"{args.push_on_device}; extrapolated to {FOLDS} folds of W,L,P,C = 50,100,10,10",
        flush=True,
    )
    phases = run_fold(args, device)
    result = {
        "machine": machine(device),
        "dry_run": args.dry_run,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "phases": phases,
        "extrapolation": extrapolate(phases),
    }
    write_json(args.out, result)
    print_report(result)
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
