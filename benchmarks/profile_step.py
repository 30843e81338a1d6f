"""Where one training stage's step spends its time: ``torch.profiler`` over the real :class:`PrototypeTrainer`'s
iterations of that stage (random in-device batches, bf16 autocast on CUDA, ``channels_last_3d``), operators (not
kernels) by their own device time, and the median step time without the profiler (issue 11: what to speed up).

``--lambda NAME=VALUE`` changes a weight of the stage-1 loss (eq. 19), e.g. ``--lambda map=0`` drops the mapping
loss and the maps it recomputes from rescaled features, so two runs give that term's cost.

Usage::

    python benchmarks/profile_step.py --preset paper --batch 32 --stage latent        # on a CUDA machine
    python benchmarks/profile_step.py --device cpu --preset cpu_small --stage latent --threads 2

Results: the operator table on stdout and ``benchmarks/results/profile_<model>_<stage>.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from bench_common import (
    PRESETS,
    RESULTS_DIR,
    add_resize_option,
    apply_resize_option,
    machine,
    preset_network,
    synchronize,
)
from bench_schedule import RandomBatches, random_batches
from ignite.engine import Events
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from monai_protoshare.engines import PrototypeTrainer, TrainingSchedule
from monai_protoshare.io import write_json
from monai_protoshare.losses import LatentSpaceLoss

STAGES = ("warmup", "latent")


def parse_lambdas(items: list[str]) -> dict[str, float]:
    weights = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--lambda takes NAME=VALUE (e.g. map=0); got {item!r}")
        weights[f"lambda_{name}"] = float(value)
    return weights


def run(args, device: torch.device) -> dict:
    size = PRESETS[args.preset]["spatial_size"]
    batch = args.batch or PRESETS[args.preset]["batch_size"]
    torch.manual_seed(0)
    net = preset_network(args.model, args.preset)
    iterations = args.warm_steps + 2 * args.steps  # timed steps, then profiled steps
    loader = RandomBatches(random_batches(2, batch, size, device), iterations)
    trainer = PrototypeTrainer(
        device,
        net,
        loader,
        TrainingSchedule(
            warmup_epochs=1, latent_epochs=int(args.stage == "latent"), push_interval=1, classifier_epochs=0
        ),
        push_data_loader=random_batches(1, batch, size, device, seed=1),
        latent_loss=LatentSpaceLoss(**parse_lambdas(args.lambdas)),
        amp=device.type == "cuda",
        lr_warmup_epochs=1,
        epoch_length=iterations,
    )
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    profiler = profile(activities=activities)
    times: list[float] = []
    state = {}

    def started(engine):
        synchronize(device)
        if engine.state.stage.value == args.stage:
            i = (engine.state.iteration - 1) % iterations
            if i == args.warm_steps + args.steps:
                profiler.__enter__()
                state["profile_start"] = time.perf_counter()
            state["start"] = time.perf_counter()

    def completed(engine):
        synchronize(device)
        if engine.state.stage.value == args.stage:
            i = (engine.state.iteration - 1) % iterations
            if args.warm_steps <= i < args.warm_steps + args.steps:
                times.append(time.perf_counter() - state["start"])
            elif i == iterations - 1:
                profiler.__exit__(None, None, None)
                state["profiled_step_s"] = (time.perf_counter() - state["profile_start"]) / args.steps

    trainer.add_event_handler(Events.ITERATION_STARTED, started)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, completed)
    if args.stage == "warmup":  # stop before the push and stage 1
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda e: e.terminate())
    trainer.run()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    # operators only: on CUDA an operator's self device time is that of the kernels it launched, listed again
    operators = [e for e in profiler.key_averages() if e.device_type != DeviceType.CUDA]
    ops = sorted(operators, key=lambda e: getattr(e, key), reverse=True)[: args.top]
    step_ms = state["profiled_step_s"] * 1e3
    return {
        "model": args.model,
        "stage": args.stage,
        "batch": batch,
        "lambdas": parse_lambdas(args.lambdas),
        "step_s": statistics.median(times),
        "profiled_steps": args.steps,
        "ops": [
            {
                "name": e.key,
                "calls_per_step": e.count / args.steps,
                "self_ms_per_step": getattr(e, key) / 1e3 / args.steps,
                "share_of_step": getattr(e, key) / 1e3 / args.steps / step_ms,
            }
            for e in ops
        ],
        "profiled_step_s": state["profiled_step_s"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="um_protoshare_e2")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    parser.add_argument("--stage", choices=STAGES, default="latent")
    parser.add_argument("--batch", type=int, help="batch size (default: the preset's)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps, then as many profiled steps")
    parser.add_argument("--warm-steps", type=int, default=2)
    parser.add_argument("--lambda", dest="lambdas", action="append", default=[], help="stage-1 loss weight NAME=VALUE")
    parser.add_argument("--top", type=int, default=25, help="operators listed")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (CPU)")
    parser.add_argument("--out", type=Path)
    add_resize_option(parser)
    args = parser.parse_args(argv)
    resize = apply_resize_option(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    result = run(args, device)
    result["machine"] = machine(device)
    result["resize"] = resize
    out = args.out or RESULTS_DIR / f"profile_{args.model}_{args.stage}.json"
    write_json(out, result)
    print(
        f"### {result['machine']['device_name']}: {args.model} {args.stage} step, batch {result['batch']}, "
        f"lambdas {result['lambdas'] or 'App. D.5'}, resize {resize}: {result['step_s']:.3f} s/step "
        f"({result['profiled_step_s']:.3f} s under the profiler)"
    )
    print("| operator | calls/step | self ms/step | share of the step |\n|---|---|---|---|")
    for op in result["ops"]:
        print(
            f"| {op['name']} | {op['calls_per_step']:.0f} | {op['self_ms_per_step']:.1f} | {op['share_of_step']:.3f} |"
        )
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
