"""Where one training stage's step spends its time: ``torch.profiler`` over the real :class:`PrototypeTrainer`'s
iterations of that stage (random in-device batches, bf16 autocast on CUDA, ``channels_last_3d``), operators (not
kernels) by their own device time, and the median step time without the profiler (issue 11: what to speed up).

``--lambda NAME=VALUE`` changes a weight of the stage-1 loss (eq. 19), e.g. ``--lambda map=0`` drops the mapping
loss and the maps it recomputes from rescaled features, so two runs give that term's cost.

``--components`` (CPU) instead breaks one step down by part of the model (issue 25): the trainer's own iteration
(``bench_models.ModelBench``) at the ``bench_models`` batch (1 at ``paper``) under ``torch.profiler``, each part's
forward in a ``record_function`` range (module hooks; the mapping module's methods, the Online-CAM head and the
prototype layer wrapped for the run) and each backward node charged to the part whose forward op created it
(autograd's sequence numbers); a part inside another (the mapping modules the mapping loss recomputes) counts
for the outer one. Beside it, interleaved with the bare encoder's forward + backward, the step's time × encoder
without the profiler, at each of ``--threads 1,2``; ``--reference-kernels`` also times the step with the plain
reference kernels (:func:`monai_protoshare.networks.layers.use_reference_kernels`) in the same process.

Usage::

    python benchmarks/profile_step.py --preset paper --batch 32 --stage latent        # on a CUDA machine
    python benchmarks/profile_step.py --device cpu --preset cpu_small --stage latent --threads 2
    python benchmarks/profile_step.py --components --preset paper --threads 1,2 --steps 3

Results: the operator table on stdout and ``benchmarks/results/profile_<model>_<stage>.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import functools
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from bench_common import (
    PRESETS,
    RESULTS_DIR,
    add_kernels_option,
    apply_kernels_option,
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
from monai_protoshare.networks import layers, protonet

STAGES = ("warmup", "latent")
OPTIMISER, OTHER_BACKWARD = "optimiser", "backward (rest)"
RANGE = "part:"


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


# ------------------------------------------------------------------ --components: the step by part of the model
def _ranged(label: str, fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.profiler.record_function(RANGE + label):
            return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def component_ranges(network: torch.nn.Module, loss: torch.nn.Module) -> Iterator[None]:
    """Every part's forward in a ``record_function`` range ``part:<name>`` while the block runs (restored after)."""
    handles, patched = [], []

    def hook(module, label):
        ctx = {}

        def pre(*_):
            ctx["range"] = torch.profiler.record_function(RANGE + label)
            ctx["range"].__enter__()

        def post(*_):
            ctx["range"].__exit__(None, None, None)

        handles.extend([module.register_forward_pre_hook(pre), module.register_forward_hook(post)])

    def wrap(owner, attribute, label):
        patched.append((owner, attribute, owner.__dict__.get(attribute), getattr(owner, attribute)))
        setattr(owner, attribute, _ranged(label, getattr(owner, attribute)))

    backbone = network.backbone
    for module, label in ((backbone.encoder, "encoder"), (backbone.decoder, "decoder")):
        if module is not None:
            hook(module, label)
    for fusion in backbone.fusions or []:
        hook(fusion, "fusion")
    for add_on in network.add_ons:
        hook(add_on, "add-ons")
    for head in network.mapping_heads or []:
        hook(head, "mapping modules")  # the mapping loss's recomputed maps (counted for the mapping loss)
        wrap(head, "hidden", "mapping modules")
        wrap(head, "maps_from_hidden", "mapping modules")
    if getattr(network, "online_cam", False):
        wrap(network, "_online_cam_logits", "Online-CAM head")
    wrap(protonet, "masked_descriptors", "prototype layer")
    wrap(network.prototypes, "similarity", "prototype layer")
    for name, label in (
        ("mapping", "mapping loss"),
        ("clustering_separation", "other losses"),
        ("online_cam", "other losses"),
        ("diversity", "other losses"),
    ):
        if hasattr(loss, name):
            hook(getattr(loss, name), label)
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for owner, attribute, own, _ in reversed(patched):
            if own is None:
                delattr(owner, attribute)  # an instance attribute set over the class's method
            else:
                setattr(owner, attribute, own)


def attribute_events(events) -> dict[str, float]:
    """Milliseconds per part: forward = its outermost ``part:`` ranges, backward = the autograd nodes of its ops."""
    ranges = sorted((e for e in events if e.name.startswith(RANGE)), key=lambda e: e.time_range.start)
    outer, last_end = [], -1.0
    for e in ranges:  # the outermost ranges: those not inside an earlier one
        if e.time_range.start >= last_end:
            outer.append(e)
            last_end = e.time_range.end
    starts = [e.time_range.start for e in outer]
    ms: dict[str, float] = defaultdict(float)
    for e in outer:
        ms[e.name[len(RANGE) :] + " fwd"] += e.time_range.elapsed_us() / 1e3
    part_of_sequence: dict[int, str] = {}
    for e in events:  # each forward op that created an autograd node: the part whose range holds it
        if e.sequence_nr >= 0 and not e.name.startswith("autograd::"):
            i = bisect.bisect_right(starts, e.time_range.start) - 1
            if i >= 0 and e.time_range.end <= outer[i].time_range.end:
                part_of_sequence.setdefault(e.sequence_nr, outer[i].name[len(RANGE) :])
    for e in events:
        if e.name.startswith("autograd::engine::evaluate_function:"):
            part = part_of_sequence.get(e.sequence_nr)
            ms[f"{part} bwd" if part else OTHER_BACKWARD] += e.time_range.elapsed_us() / 1e3
        elif e.name.startswith("Optimizer.") and e.cpu_parent is None:
            ms[OPTIMISER] += e.time_range.elapsed_us() / 1e3
    return dict(ms)


def components(args) -> dict:
    """The step of ``args.stage`` by part, and its time × the encoder's forward + backward, per thread count."""
    from bench_models import EncoderBench, ModelBench

    stage = args.stage
    encoder, bench = EncoderBench(args.preset), ModelBench(args.model, args.preset)
    variants = {"fast kernels": False, **({"reference kernels": True} if args.reference_kernels else {})}
    result = {"model": args.model, "stage": stage, "preset": args.preset, "input": list(encoder.images.shape)}
    for threads in args.thread_counts:
        torch.set_num_threads(threads)
        bench.enter(stage)
        encoder.train()  # warm-up: oneDNN primitives, allocator
        bench.step()
        times: dict[str, list[float]] = {"encoder": [], **{v: [] for v in variants}}
        for _ in range(args.steps):
            times["encoder"].append(timed(encoder.train))
            for variant, reference in variants.items():
                with layers.use_reference_kernels(reference):
                    times[variant].append(timed(bench.step))
        entry = {
            "encoder_s": statistics.median(times["encoder"]),
            **{f"{v} step_s": statistics.median(times[v]) for v in variants},
            **{
                f"{v} x_encoder": statistics.median(a / b for a, b in zip(times[v], times["encoder"], strict=True))
                for v in variants
            },
            **{f"{v} x_encoder_range": _range(times[v], times["encoder"]) for v in variants},
            "times_s": times,
        }
        if args.reference_kernels:  # the two steps run back to back: their ratio is the least noisy comparison
            entry["fast / reference"] = statistics.median(
                a / b for a, b in zip(times["fast kernels"], times["reference kernels"], strict=True)
            )
            entry["fast / reference range"] = _range(times["fast kernels"], times["reference kernels"])
        with component_ranges(bench.net, bench.trainer.latent_loss), profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            bench.step()
            profiled = time.perf_counter() - start
        parts = attribute_events(prof.events())
        parts["Python, dispatch, rest"] = profiled * 1e3 - sum(parts.values())
        entry["profiled_step_ms"] = profiled * 1e3
        entry["parts_ms"] = parts
        result[f"threads_{threads}"] = entry
    return result


def timed(fn: Callable) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _range(times: list[float], reference: list[float]) -> list[float]:
    ratios = [a / b for a, b in zip(times, reference, strict=True)]
    return [min(ratios), max(ratios)]


def print_components(result: dict, thread_counts: list[int]) -> None:
    entries = [result[f"threads_{t}"] for t in thread_counts]
    print(f"### {result['model']} {result['stage']} step, input {result['input']}, threads {thread_counts}")
    for key in entries[0]:
        if key.endswith("x_encoder"):
            cells = [f"{e[key]:.2f} ({e[key + '_range'][0]:.2f}-{e[key + '_range'][1]:.2f})" for e in entries]
            print(
                f"- step x encoder f+b, {key[: -len(' x_encoder')]}: "
                + "; ".join(f"{t} thread(s) {c}" for t, c in zip(thread_counts, cells))
            )
    print("- encoder f+b s: " + ", ".join(f"{e['encoder_s']:.3f}" for e in entries))
    if "fast / reference" in entries[0]:
        print(
            "- step fast / reference kernels: "
            + "; ".join(
                f"{t} thread(s) {e['fast / reference']:.2f} ({e['fast / reference range'][0]:.2f}-"
                f"{e['fast / reference range'][1]:.2f})"
                for t, e in zip(thread_counts, entries)
            )
        )
    names = sorted({k for e in entries for k in e["parts_ms"]}, key=lambda k: -entries[-1]["parts_ms"].get(k, 0.0))
    print("\n| part | " + " | ".join(f"{t} thr ms | share" for t in thread_counts) + " |")
    print("|---|" + "---|---|" * len(thread_counts))
    for name in names:
        cells = []
        for e in entries:
            ms = e["parts_ms"].get(name, 0.0)
            cells += [f"{ms:.0f}", f"{ms / e['profiled_step_ms']:.3f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| profiled step | " + " | ".join(f"{e['profiled_step_ms']:.0f} | 1" for e in entries) + " |")


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
    parser.add_argument("--threads", help="torch intra-op threads (CPU); with --components a comma-separated list")
    parser.add_argument("--components", action="store_true", help="CPU: the step by part of the model, x encoder")
    parser.add_argument("--reference-kernels", action="store_true", help="--components: also the reference kernels")
    parser.add_argument("--out", type=Path)
    add_kernels_option(parser)
    args = parser.parse_args(argv)
    if args.components:
        args.thread_counts = [int(t) for t in (args.threads or "1,2").split(",")]
        result = components(args)
        result["machine"] = machine("cpu")
        out = args.out or RESULTS_DIR / f"components_{args.model}_{args.stage}_{args.preset}.json"
        write_json(out, result)
        print_components(result, args.thread_counts)
        print(f"written {out}")
        return 0
    if args.threads and "," in args.threads:
        parser.error("--threads takes one number without --components")
    kernels = apply_kernels_option(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(int(args.threads))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    result = run(args, device)
    result["machine"] = machine(device)
    result["kernels"] = kernels
    out = args.out or RESULTS_DIR / f"profile_{args.model}_{args.stage}.json"
    write_json(out, result)
    print(
        f"### {result['machine']['device_name']}: {args.model} {args.stage} step, batch {result['batch']}, "
        f"lambdas {result['lambdas'] or 'App. D.5'}, kernels {kernels}: {result['step_s']:.3f} s/step "
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
