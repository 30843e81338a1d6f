"""Data costs (issue 11 item 4): load + preprocess per case for each preset, with and without MONAI caching, and
the fraction of a real ``cpu_small`` training epoch spent waiting for data.

Part 1 (``--part cases``), on a synthetic BraTS-like cohort at the release's 1 mm (240 x 240 x 155, gzipped NIfTI):

- per case: ``load`` (``LoadImaged`` + ``EnsureChannelFirstd`` of the four sequences), ``preprocess`` (all of
  :func:`~monai_protoshare.data.transforms.preprocessing_transforms`, loading included) and ``augment`` (the eight
  random augmentations of App. C on the preprocessed case, several draws);
- per case and epoch, through the datasets the bundle could use with the training transforms: ``Dataset`` (no
  caching: preprocess + augment every epoch), ``CacheDataset`` (preprocessing once when built, in memory; every
  epoch a copy of the cached case + augment) and ``PersistentDataset`` (preprocessing once, written to disk;
  later epochs load it + augment). The three run round-robin, epoch by epoch, in one process.

Part 2 (``--part epoch``): the ``um_protoshare`` bundle with the ``cpu_small`` preset (``CacheDataset``,
``num_workers: 0``) trains 2 warm-up epochs, 2 stage-1 epochs, a push and one stage-3 epoch (cached
similarities) on a synthetic cohort at 2 mm (the demo's); Ignite's ``GET_BATCH_STARTED`` / ``GET_BATCH_COMPLETED``
events time the data loader's ``next()``. Reported per epoch: seconds, data waiting, their fraction (goal < 10 %
for the epochs that read images), the push, and the one-off CacheDataset build. The first epoch of each stage
also warms oneDNN up; the second is the steady state.

Usage::

    python benchmarks/bench_data.py --part cases --threads 1
    python benchmarks/bench_data.py --part epoch --threads 2 --epoch-cases 40

Results: ``benchmarks/results/data.json`` (``cases`` and ``epoch`` entries).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from bench_common import BUNDLE_DIR, PRESETS, RESULTS_DIR, SCRATCH_DIR, machine, print_table, synthetic_cohort
from ignite.engine import Events
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.data.utils import set_rnd
from monai.transforms import Compose

from monai_protoshare.data.brats import load_brats_datalist
from monai_protoshare.data.transforms import augmentation_transforms, preprocessing_transforms, train_transforms
from monai_protoshare.io import write_json

GOAL_WAIT_FRACTION = 0.10
CASE_PRESETS = ("cpu_small", "paper")


def _seconds(fn, *args) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def per_case_costs(datalist: list[dict], preset: str, epochs: int, draws: int) -> dict[str, Any]:
    """Median seconds per case of loading, preprocessing and augmenting, and per case and epoch of each dataset."""
    size, pixdim = PRESETS[preset]["spatial_size"], PRESETS[preset]["pixdim"]
    pre = preprocessing_transforms(size, pixdim, with_seg=False)
    load = Compose(pre.transforms[:2])
    augment = augmentation_transforms("image", ())
    times: dict[str, list[float]] = {"load": [], "preprocess": [], "augment": []}
    preprocessed = []
    for item in datalist:
        times["load"].append(_seconds(load, dict(item))[1])
        out, t = _seconds(pre, dict(item))
        times["preprocess"].append(t)
        preprocessed.append(out)
    for draw in range(draws):
        augment.set_random_state(draw)
        for item in preprocessed:
            times["augment"].append(_seconds(augment, copy.deepcopy(item))[1])
    row: dict[str, Any] = {"preset": preset, **{f"{k}_s": statistics.median(v) for k, v in times.items()}}

    transform = train_transforms(size, pixdim, augment=True)
    n = len(datalist)
    with tempfile.TemporaryDirectory(prefix="bench_data_", dir=SCRATCH_DIR) as tmp:
        datasets: dict[str, Dataset] = {"Dataset": Dataset(datalist, transform)}
        cache, t_build = _seconds(
            lambda: CacheDataset(datalist, transform, cache_rate=1.0, num_workers=0, progress=False)
        )
        datasets["CacheDataset"] = cache
        datasets["PersistentDataset"] = PersistentDataset(datalist, transform, cache_dir=tmp)
        epoch_times: dict[str, list[float]] = {name: [] for name in datasets}
        for epoch in range(epochs):
            for name, ds in datasets.items():
                set_rnd(ds, epoch)
                epoch_times[name].append(_seconds(lambda ds=ds: [ds[i] for i in range(n)])[1] / n)
    row["cache_build_s"] = t_build / n
    for name, t in epoch_times.items():
        row[f"{name}_first_s"] = t[0]
        row[f"{name}_later_s"] = statistics.median(t[1:]) if len(t) > 1 else float("nan")
    row["epoch_times_s"] = epoch_times
    row["raw_times_s"] = times
    return row


def run_cases(args) -> dict[str, Any]:
    cohort = synthetic_cohort(args.cases, args.spacing)
    datalist = [{k: d[k] for k in ("image", "label", "subject_id")} for d in load_brats_datalist(cohort, cache=False)]
    rows = [per_case_costs(datalist[: args.cases], p, args.epochs, args.draws) for p in CASE_PRESETS]
    entry = {
        "what": "seconds per case (medians over cases); dataset rows: per case and epoch, first epoch and later ones",
        "cohort": {"cases": args.cases, "spacing_mm": args.spacing},
        "machine": machine(),
        "rows": rows,
    }
    print_table(
        rows,
        [
            ("preset", "preset", ""),
            ("load_s", "load", ".3f"),
            ("preprocess_s", "load+preprocess", ".3f"),
            ("augment_s", "augment", ".3f"),
            ("Dataset_first_s", "Dataset ep1", ".3f"),
            ("Dataset_later_s", "Dataset ep2+", ".3f"),
            ("cache_build_s", "CacheDataset build", ".3f"),
            ("CacheDataset_first_s", "CacheDataset ep1", ".3f"),
            ("CacheDataset_later_s", "CacheDataset ep2+", ".3f"),
            ("PersistentDataset_first_s", "Persistent ep1", ".3f"),
            ("PersistentDataset_later_s", "Persistent ep2+", ".3f"),
        ],
        title=f"### data, seconds per case, cohort {args.cases} cases at {args.spacing:g} mm, "
        f"{torch.get_num_threads()} thread(s), load average {entry['machine']['load_average']}",
    )
    return entry


class EpochTimer:
    """Per-epoch wall time and time in the data loader's ``next()`` of an Ignite engine (attach it last)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._batch_started)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._batch_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _epoch_started(self, engine) -> None:
        self._epoch_start, self._wait, self._batches = time.perf_counter(), 0.0, 0

    def _batch_started(self, engine) -> None:
        self._batch_start = time.perf_counter()

    def _batch_completed(self, engine) -> None:
        self._wait += time.perf_counter() - self._batch_start
        self._batches += 1

    def _epoch_completed(self, engine) -> None:
        seconds = time.perf_counter() - self._epoch_start
        push = engine.state.push_seconds if engine.schedule.push_after(engine.state.epoch) else None
        train = seconds - (push or 0.0)
        self.rows.append(
            {
                "epoch": engine.state.epoch,
                "stage": engine.state.stage.value,
                "iterations": self._batches,
                "epoch_s": seconds,
                "push_s": push,
                "data_wait_s": self._wait,
                "wait_fraction": self._wait / train,
            }
        )


def run_epoch(args) -> dict[str, Any]:
    from monai_protoshare.workflows.demo import bundle_workflow

    cohort = synthetic_cohort(args.epoch_cases, 2.0)
    with tempfile.TemporaryDirectory(prefix="bench_epoch_", dir=SCRATCH_DIR) as tmp:
        overrides = {
            "dataset_dir": str(cohort),
            "output_dir": tmp,
            "warmup_epochs": 2,
            "latent_epochs": 2,
            "push_interval": 2,
            "classifier_epochs": 1,
            "lr_warmup_epochs": 1,
            "resume": False,
        }
        if args.num_workers is not None:
            overrides["num_workers"] = args.num_workers
        if args.thread_loader:  # MONAI's ThreadDataLoader: the next batch is prepared in a thread during the step
            overrides["train#dataloader#_target_"] = "ThreadDataLoader"
        workflow = bundle_workflow(BUNDLE_DIR, ["train.yaml", "presets/cpu_small.yaml"], **overrides)
        torch.set_num_threads(args.threads)  # the bundle's imports may have changed it
        trainer, build_s = _seconds(workflow.parser.get_parsed_content, "train#trainer")
        timer = EpochTimer()
        timer.attach(trainer)
        _, run_s = _seconds(trainer.run)
        n_train = len(trainer.data_loader.dataset)
    for row in timer.rows:
        row["goal_met"] = row["wait_fraction"] < GOAL_WAIT_FRACTION if row["stage"] != "classifier" else None
    entry = {
        "what": "um_protoshare bundle, cpu_small preset, short schedule; data_wait = time in the loader's next()",
        "cohort": {"cases": args.epoch_cases, "spacing_mm": 2.0, "training_cases": n_train},
        "num_workers": workflow.parser.get_parsed_content("num_workers"),
        "loader": type(trainer.data_loader).__name__,
        "build_s": build_s,
        "run_s": run_s,
        "goal_wait_fraction": GOAL_WAIT_FRACTION,
        "machine": machine(),
        "rows": timer.rows,
    }
    print_table(
        timer.rows,
        [
            ("epoch", "epoch", "d"),
            ("stage", "stage", ""),
            ("iterations", "iterations", "d"),
            ("epoch_s", "epoch s", ".2f"),
            ("push_s", "of which push s", ".2f"),
            ("data_wait_s", "data wait s", ".2f"),
            ("wait_fraction", "wait / (epoch − push)", ".3f"),
        ],
        title=f"### cpu_small training epochs, {n_train} training cases, batch 8, {entry['loader']}, "
        f"num_workers {entry['num_workers']}, "
        f"{args.threads} thread(s), load average {entry['machine']['load_average']}; building the trainer (CacheDataset "
        f"of both loaders) took {build_s:.1f} s",
    )
    return entry


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["cases", "epoch", "both"], default="both")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--cases", type=int, default=3, help="cases of the 1 mm cohort (part 1)")
    parser.add_argument("--spacing", type=float, default=1.0, help="voxel size of the part-1 cohort, mm")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per dataset (part 1)")
    parser.add_argument("--draws", type=int, default=3, help="augmentation draws per case (part 1)")
    parser.add_argument("--epoch-cases", type=int, default=40, help="cohort size of part 2 (fold 0 of 5 trains 4/5)")
    parser.add_argument("--num-workers", type=int, help="override the preset's num_workers (part 2)")
    parser.add_argument("--thread-loader", action="store_true", help="train with monai.data.ThreadDataLoader (part 2)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "data.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    SCRATCH_DIR.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if args.part in ("cases", "both"):
        results["cases"] = run_cases(args)
        write_json(args.out, results)
    if args.part in ("epoch", "both"):
        key = "epoch" + ("" if args.num_workers is None else f"_num_workers{args.num_workers}")
        key += "_thread_loader" if args.thread_loader else ""
        results[key] = run_epoch(args)
        write_json(args.out, results)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
