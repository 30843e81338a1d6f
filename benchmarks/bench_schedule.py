"""Per-stage training cost of the real :class:`PrototypeTrainer` and an estimate of the full 5-fold schedule's wall
time (issue 11 item 6; the driver of ``benchmarks/gpu_check.sh``).

For each model (default UM-ProtoShare E2 and MProtoNet) at the preset's size and batch, the trainer runs one
warm-up epoch, one stage-1 epoch (decoder frozen), the push and one stage-3 epoch on the push's cached similarities
(``classifier_inputs="cached"``), each of ``--warm-steps + --steps`` iterations on random in-device batches (data
loading is measured by ``bench_data.py``), with bf16 autocast on CUDA (``amp=True``) and ``channels_last_3d``. Per
stage: median seconds per step after the first ``--warm-steps`` (cuDNN autotuning, allocator), images/s, achieved
TFLOP/s (2 x the counted multiply-accumulates of the stage's forward + backward per case, losses not counted) and
the peak memory (CUDA: ``torch.cuda.max_memory_allocated``). Then the push is timed again on its own
(``push_prototypes`` runs fp32, as in training), and a no-grad bf16 forward (the evaluator's).

The estimate of one fold: ``W`` warm-up + ``L`` stage-1 epochs of ``ceil(N / batch)`` steps, ``L / P`` pushes
over ``N`` cases, ``L / P x C`` stage-3 epochs (App. D.5: W = 50, L = 100, P = 10, C = 10; N = 295 training
cases of 369), plus the evaluation of the held-out cases (two bf16 forwards for predictions and the randomisation
check, 51 fp32 forwards for the IDS); times ``--folds``. The floating-point work of the same schedule by count is
printed beside it (goal for E2 on an H100: <= 1 hour, about 350 PFLOP, i.e. >= 100 TFLOP/s sustained).

Usage::

    benchmarks/gpu_check.sh                                   # CUDA machine, paper size, batch 32 (the check)
    CUDA_VISIBLE_DEVICES= python benchmarks/bench_schedule.py --dry-run   # CPU, tiny sizes: checks the logic
    python benchmarks/bench_schedule.py --device cpu --preset cpu_small --threads 2   # a CPU estimate

Results: ``benchmarks/results/schedule.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from bench_common import (
    PRESETS,
    RESULTS_DIR,
    add_kernels_option,
    apply_kernels_option,
    machine,
    preset_network,
    print_table,
    synchronize,
)
from ignite.engine import Events
from torch.utils.flop_counter import FlopCounterMode

from monai_protoshare.engines import PrototypeTrainer, TrainingSchedule
from monai_protoshare.engines.schedule import Stage
from monai_protoshare.engines.stages import TRAINABLE_GROUPS
from monai_protoshare.explain.push import push_prototypes
from monai_protoshare.io import write_json
from monai_protoshare.networks import CNNClassifier, PrototypeNetwork

PAPER_SCHEDULE = TrainingSchedule()  # App. D.5: 50 warm-up, 100 stage-1 epochs, push every 10, 10 stage-3 epochs
STAGES = (Stage.WARMUP.value, Stage.LATENT.value, Stage.CLASSIFIER.value)
IDS_FORWARDS = 51
GOAL_HOURS = 1.0


class RandomBatches:
    """``length`` batches cycling over a few fixed random batches already on the device (no data loading)."""

    def __init__(self, batches: list[dict[str, Any]], length: int) -> None:
        self.batches, self.length = batches, int(length)
        self.batch_size = len(batches[0]["label"])

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        for i in range(self.length):
            yield self.batches[i % len(self.batches)]


def random_batches(n: int, batch: int, size: tuple[int, ...], device: torch.device, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randn(batch, 4, *size, generator=g).to(device),
            "label": (torch.arange(batch) % 2).to(device),
            "subject_id": [f"case{i}_{j}" for j in range(batch)],
        }
        for i in range(n)
    ]


def count_macs_per_case(model: str, preset: str) -> dict[str, float]:
    """Counted multiply-accumulates per case (meta device, batch 1) of the warm-up model's and stage 1's forward +
    backward (cross-entropy on the logits; the other loss terms are not counted) and of a no-grad forward."""
    size = PRESETS[preset]["spatial_size"]
    with torch.device("meta"):
        net = preset_network(model, preset)
        x, y = torch.empty(1, 4, *size), torch.zeros(1, dtype=torch.long)
        macs = {}
        warm = CNNClassifier.sharing(net) if isinstance(net, PrototypeNetwork) else net
        with FlopCounterMode(display=False) as counter:
            F.cross_entropy(warm.train()(x), y).backward()
        macs["warmup"] = counter.get_total_flops() / 2
        if isinstance(net, PrototypeNetwork):
            for group, params in net.parameter_groups().items():
                for p in params:
                    p.requires_grad_(group in TRAINABLE_GROUPS[Stage.LATENT])
            with FlopCounterMode(display=False) as counter:
                F.cross_entropy(net.train().explain(x).logits, y).backward()
            macs["latent"] = counter.get_total_flops() / 2
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net.eval()(x)
        macs["forward"] = counter.get_total_flops() / 2
    return macs


class StageTimer:
    """Seconds of every iteration (device-synchronised) and the peak memory of every stage of a trainer."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.steps: dict[str, list[float]] = {s: [] for s in STAGES}
        self.peak_gib: dict[str, float] = {}
        self.push_s: list[float] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_STARTED, self._iteration_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _epoch_started(self, engine) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _iteration_started(self, engine) -> None:
        synchronize(self.device)
        self._start = time.perf_counter()

    def _iteration_completed(self, engine) -> None:
        synchronize(self.device)
        self.steps[engine.state.stage.value].append(time.perf_counter() - self._start)

    def _epoch_completed(self, engine) -> None:
        stage = engine.state.stage.value
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2**30
            self.peak_gib[stage] = max(peak, self.peak_gib.get(stage, 0.0))
        if engine.schedule.push_after(engine.state.epoch):
            self.push_s.append(engine.state.push_seconds)


def measure_model(model: str, args, device: torch.device, batch: int) -> dict[str, Any]:
    """Run the short schedule once at ``batch``; returns per-stage step times, memory and pass times."""
    size = PRESETS[args.preset]["spatial_size"]
    torch.manual_seed(0)
    net = preset_network(model, args.preset).to(device)
    iterations = args.warm_steps + args.steps
    loader = RandomBatches(random_batches(2, batch, size, device), iterations)
    push_batches = random_batches(max(1, math.ceil(args.push_cases / batch)), batch, size, device, seed=1)
    is_cnn = isinstance(net, CNNClassifier)
    schedule = TrainingSchedule(
        warmup_epochs=1, latent_epochs=0 if is_cnn else 1, push_interval=1, classifier_epochs=0 if is_cnn else 1
    )
    trainer = PrototypeTrainer(
        device,
        net,
        loader,
        schedule,
        push_data_loader=None if is_cnn else push_batches,
        classifier_inputs="cached",
        lr_warmup_epochs=1,
        channels_last=not args.contiguous,
        amp=device.type == "cuda" and not args.no_amp,
        epoch_length=iterations,
    )
    timer = StageTimer(device)
    timer.attach(trainer)
    trainer.run()
    result: dict[str, Any] = {"model": model, "batch": batch}
    for stage, times in timer.steps.items():
        if times:
            timed = times[args.warm_steps :] or times
            result[f"{stage}_step_s"] = statistics.median(timed)
            result[f"{stage}_peak_gib"] = timer.peak_gib.get(stage)
    if not is_cnn:  # the push again, on its own (the first one paid for fp32 autotuning)
        push_n = sum(len(b["label"]) for b in push_batches)
        synchronize(device)
        start = time.perf_counter()
        push_prototypes(net, push_batches, device)
        synchronize(device)
        result["push_s_per_case"] = (time.perf_counter() - start) / push_n
        result["push_in_training_s_per_case"] = timer.push_s[0] / push_n if timer.push_s else None
        net.eval()
        images = push_batches[0]["image"].contiguous(memory_format=trainer.memory_format)
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=trainer.amp):
            for _ in range(2):  # the first call autotunes
                synchronize(device)
                start = time.perf_counter()
                net.explain(images, online_cam=False)
                synchronize(device)
        result["forward_amp_s_per_case"] = (time.perf_counter() - start) / len(images)
    del trainer, net, loader, push_batches
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def estimate(result: dict[str, Any], macs: dict[str, float], args) -> dict[str, Any]:
    """Wall time and floating-point work of ``--folds`` folds of the App. D.5 schedule from the measured costs."""
    s, n, batch = PAPER_SCHEDULE, args.train_cases, result["batch"]
    steps = math.ceil(n / batch)
    est: dict[str, Any] = {"warmup_epoch_s": steps * result["warmup_step_s"]}
    fold = s.warmup_epochs * est["warmup_epoch_s"]
    flop = s.warmup_epochs * n * 2 * macs["warmup"]
    if "latent_step_s" in result:
        est["latent_epoch_s"] = steps * result["latent_step_s"]
        est["push_s"] = n * result["push_s_per_case"]
        est["classifier_epoch_s"] = steps * result["classifier_step_s"]
        fold += s.latent_epochs * est["latent_epoch_s"] + s.num_blocks * est["push_s"]
        fold += s.num_blocks * s.classifier_epochs * est["classifier_epoch_s"]
        flop += s.latent_epochs * n * 2 * macs["latent"] + s.num_blocks * n * 2 * macs["forward"]
        est["evaluation_s"] = args.test_cases * (
            2 * result["forward_amp_s_per_case"] + IDS_FORWARDS * result["push_s_per_case"]
        )
        flop += args.test_cases * (2 + IDS_FORWARDS) * 2 * macs["forward"]
    est["training_fold_s"] = fold
    est["fold_s"] = fold + est.get("evaluation_s", 0.0)
    est["total_hours"] = args.folds * est["fold_s"] / 3600
    est["total_pflop"] = args.folds * flop / 1e15
    est["sustained_tflops"] = est["total_pflop"] * 1e3 / (est["total_hours"] * 3600)
    return est


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="um_protoshare_e2,mprotonet", help="comma-separated model names")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    parser.add_argument("--batch", type=int, help="batch size (default: 32; the preset's on CPU)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--steps", type=int, default=4, help="timed iterations per stage")
    parser.add_argument("--warm-steps", type=int, default=2, help="untimed first iterations per stage")
    parser.add_argument("--push-cases", type=int, default=64, help="cases of the separately timed push")
    parser.add_argument("--train-cases", type=int, default=295, help="training cases per fold (369 x 4/5)")
    parser.add_argument("--test-cases", type=int, default=74, help="held-out cases per fold")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (CPU)")
    parser.add_argument("--no-amp", action="store_true", help="fp32 on CUDA (default: bf16 autocast)")
    parser.add_argument("--contiguous", action="store_true", help="contiguous tensors (default: channels_last_3d)")
    parser.add_argument("--no-cudnn-benchmark", action="store_true", help="keep cuDNN's heuristic algorithm choice")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip models not started within this time")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, 1 step: checks the logic only")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "schedule.json")
    add_kernels_option(parser)
    args = parser.parse_args(argv)
    kernels = apply_kernels_option(args)
    start = time.perf_counter()
    if args.dry_run:
        args.device, args.preset, args.steps, args.warm_steps, args.push_cases = "cpu", "tiny", 1, 1, 4
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            f"bench_schedule: no CUDA device is visible to torch {torch.__version__} (a CPU-only build, or "
            "CUDA_VISIBLE_DEVICES is empty). Nothing was measured; use --device cpu or --dry-run to check the logic.",
            file=sys.stderr,
        )
        return 3
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    batch = args.batch or (32 if device.type == "cuda" else PRESETS[args.preset]["batch_size"])
    rows, estimates, skipped = [], [], []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        if time.perf_counter() - start > args.budget_s:
            skipped.append(model)
            print(f"{model}: skipped, the {args.budget_s:.0f} s budget is spent", flush=True)
            continue
        macs = count_macs_per_case(model, args.preset)
        b, result = batch, None
        while result is None:
            print(f"{model}: batch {b} ...", flush=True)
            try:
                result = measure_model(model, args, device, b)
            except torch.cuda.OutOfMemoryError:
                if b <= 2:
                    raise
                print(f"{model}: out of GPU memory at batch {b}; trying {b // 2}", flush=True)
            if result is None:  # outside the except block, so the failed run's tensors can be freed
                gc.collect()
                torch.cuda.empty_cache()
                b //= 2
        result["oom_at_batch"] = batch if b != batch else None
        for stage in ("warmup", "latent"):
            if f"{stage}_step_s" in result:
                result[f"{stage}_images_per_s"] = b / result[f"{stage}_step_s"]
                result[f"{stage}_tflops"] = 2 * macs[stage] * b / result[f"{stage}_step_s"] / 1e12
        result["gmac_per_case"] = {k: v / 1e9 for k, v in macs.items()}
        rows.append(result)
        estimates.append({"model": model, **estimate(result, macs, args)})
    info = machine(device)
    if device.type == "cuda":
        info["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    entry = {
        "what": "PrototypeTrainer per-stage step costs on random in-device batches and the estimated wall time of "
        f"{args.folds} folds of the App. D.5 schedule ({args.train_cases} training, {args.test_cases} held-out cases)",
        "dry_run": args.dry_run,
        "preset": args.preset,
        "amp_bf16": device.type == "cuda" and not args.no_amp,
        "channels_last": not args.contiguous,
        "kernels": kernels,
        "steps": args.steps,
        "warm_steps": args.warm_steps,
        "machine": info,
        "rows": rows,
        "estimates": estimates,
        "skipped": skipped,
        "wall_s": time.perf_counter() - start,
    }
    write_json(args.out, entry)
    title = (
        f"### {'DRY RUN (CPU, tiny sizes: not the GPU numbers) — ' if args.dry_run else ''}{info['device_name']}, "
        f"preset {args.preset}, bf16 autocast {entry['amp_bf16']}, channels_last {entry['channels_last']}, kernels {kernels}"
    )
    print_table(
        rows,
        [
            ("model", "model", ""),
            ("batch", "batch", "d"),
            ("warmup_step_s", "warm-up step s", ".3f"),
            ("warmup_images_per_s", "img/s", ".1f"),
            ("warmup_tflops", "TFLOP/s", ".1f"),
            ("warmup_peak_gib", "peak GiB", ".1f"),
            ("latent_step_s", "stage-1 step s", ".3f"),
            ("latent_images_per_s", "img/s", ".1f"),
            ("latent_tflops", "TFLOP/s", ".1f"),
            ("latent_peak_gib", "peak GiB", ".1f"),
            ("push_s_per_case", "push s/case (fp32)", ".4f"),
            ("forward_amp_s_per_case", "fwd s/case (bf16)", ".4f"),
            ("classifier_step_s", "stage-3 step s", ".4f"),
        ],
        title=title,
    )
    print_table(
        estimates,
        [
            ("model", "model", ""),
            ("warmup_epoch_s", "warm-up epoch s", ".1f"),
            ("latent_epoch_s", "stage-1 epoch s", ".1f"),
            ("push_s", "push s", ".1f"),
            ("classifier_epoch_s", "stage-3 epoch s", ".2f"),
            ("training_fold_s", "training/fold s", ".0f"),
            ("evaluation_s", "evaluation/fold s", ".0f"),
            ("total_hours", f"{args.folds} folds h (goal E2 ≤ {GOAL_HOURS:g})", ".2f"),
            ("total_pflop", "PFLOP by count", ".1f"),
            ("sustained_tflops", "sustained TFLOP/s", ".1f"),
        ],
        title=f"### estimate: {args.folds} folds × (schedule {PAPER_SCHEDULE.warmup_epochs}/"
        f"{PAPER_SCHEDULE.latent_epochs}/push every {PAPER_SCHEDULE.push_interval}/{PAPER_SCHEDULE.classifier_epochs}, "
        f"{args.train_cases} training cases + evaluation of {args.test_cases}); data loading not included",
    )
    print(f"written {args.out} ({entry['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
