"""Cost of every model of Table 1 relative to the bare truncated encoder (issue 3 "Benchmark", issues 11 and 25).

For each model of :func:`monai_protoshare.networks.model_names` it measures, at one or more thread counts
(``--threads 1,2``) in one process:

- the **training step of every stage the model trains**, timed as users run it: the :class:`PrototypeTrainer`'s
  own ``_iteration`` (forward, the stage's real loss, backward, the optimiser step; its stage entered by the
  trainer's ``_start_stage``, so trainable groups and module modes are the trainer's), with the losses,
  learning rates and stage-3 inputs of the model's bundle (``bundles/<model>/configs/train.yaml``; the
  UM-ProtoShare ablations use ``bundles/um_protoshare``): ``warmup`` (the CNN warm-up), ``latent`` (stage 1,
  eq. 19) and ``classifier`` (stage 3, eq. 21); a CNN has only ``warmup``;
- a no-grad eval-mode forward (the evaluator's);
- the reference: the bare encoder (ResNet-152 cut after layer2 at the preset's size), forward + backward of the
  mean of its last feature map, and its no-grad forward.

Rounds are interleaved (round 0 untimed: oneDNN primitives, allocator); each ratio is the median over rounds of
(time / the encoder's time in the same round at the same thread count), so load swings on a shared machine
cancel. Multiply-accumulates (MAC = FLOPs / 2 of convolutions and matrix products, ``FlopCounterMode``) are
counted during round 0 of the first thread count; achieved MAC/s relative to the encoder's is
``MAC ratio / time ratio`` (goal >= 0.85). ``--memory`` adds the peak-RSS growth of a forward and of one
training step, each model and stage in a fresh subprocess. Networks and inputs are ``channels_last_3d`` as the
trainer and evaluator use them (``--memory-format``).

Usage::

    python benchmarks/bench_models.py --preset cpu_small --threads 1,2
    python benchmarks/bench_models.py --preset paper --threads 1,2 --repeats 3 --models um_protoshare_e2,mprotonet
    python benchmarks/bench_models.py --preset paper --models um_protoshare_e2 --stages latent --repeats 3
    python benchmarks/bench_models.py --quick      # tiny sizes, one round: checks the logic in seconds
    python benchmarks/bench_models.py --preset cpu_small --profile um_protoshare_e2 --stages latent

Results are merged into ``benchmarks/results/models.json`` (one entry per preset).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_common import PRESETS, RESULTS_DIR, load_average, machine, preset_network
from monai.bundle import ConfigParser
from torch.utils.flop_counter import FlopCounterMode

from monai_protoshare.engines import PrototypeTrainer, TrainingSchedule
from monai_protoshare.engines.schedule import Stage
from monai_protoshare.io import write_json
from monai_protoshare.networks import MODEL_CONFIGURATIONS, CNNClassifier, ResNetEncoder, model_names

RESULTS = RESULTS_DIR / "models.json"
BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
ENCODER = "encoder"
ALIAS = "um_protoshare"
STAGES = tuple(s.value for s in Stage)  # warmup, latent, classifier
MEMORY_FORMATS = {"channels_last": torch.channels_last_3d, "contiguous": torch.contiguous_format}
GOAL = 0.85
#: CPU batch of each preset (the bundles' GPU batch of 32 does not fit a CPU benchmark)
BATCH = {"paper": 1, "cpu_small": 8, "tiny": 2}
#: the trainer's keyword arguments read from the bundle (everything but data, network, schedule and handlers)
TRAINER_OPTIONS = (
    "latent_loss",
    "classifier_loss",
    "warmup_lr",
    "warmup_weight_decay",
    "latent_lr",
    "latent_weight_decay",
    "lr_warmup_epochs",
    "classifier_lr",
    "mask_shift_lr_factor",
    "classifier_inputs",
    "seed",
)


def bundle_dir(model: str) -> Path:
    """The bundle that trains ``model``: ``bundles/<model>``, or ``bundles/um_protoshare`` for its ablations."""
    own = BUNDLES / model
    return own if (own / "configs" / "train.yaml").is_file() else BUNDLES / ALIAS


def trainer_options(model: str) -> dict[str, Any]:
    """The :class:`PrototypeTrainer` arguments of :data:`TRAINER_OPTIONS` the model's bundle sets, as it parses
    them (its loss objects with their coefficients, learning rates, ``classifier_inputs``)."""
    parser = ConfigParser()
    parser.read_config(str(bundle_dir(model) / "configs" / "train.yaml"))
    given = parser.get("train#trainer")
    return {key: parser.get_parsed_content(f"train#trainer#{key}") for key in TRAINER_OPTIONS if key in given}


def stages_of(model: str) -> tuple[str, ...]:
    """The stages the model trains: the warm-up only for the CNN, all three for a prototype network."""
    return ("warmup",) if MODEL_CONFIGURATIONS.get(model) is MODEL_CONFIGURATIONS["cnn"] else STAGES


def random_batch(preset: str, seed: int = 0) -> dict[str, Any]:
    """One batch of the preset's CPU size: random images (B, 4, H, W, D), labels alternating 0, 1."""
    g = torch.Generator().manual_seed(seed)
    batch = BATCH[preset]
    images = torch.randn(batch, 4, *PRESETS[preset]["spatial_size"], generator=g)
    return {"image": images, "label": torch.arange(batch) % 2, "subject_id": [f"case{j}" for j in range(batch)]}


class ModelBench:
    """One model at one preset: its network, a trainer of the bundle's options, and the timed callables."""

    def __init__(self, model: str, preset: str, memory_format: str = "channels_last") -> None:
        self.model, self.preset = model, preset
        torch.manual_seed(0)
        self.batch = random_batch(preset)
        self.net = preset_network(model, preset)
        layout = MEMORY_FORMATS[memory_format]
        self.images = self.batch["image"].contiguous(memory_format=layout)
        prototypes = int(not isinstance(self.net, CNNClassifier))  # one epoch of each stage: epochs 1, 2, 3
        self.trainer = PrototypeTrainer(
            "cpu",
            self.net,
            [self.batch],
            TrainingSchedule(warmup_epochs=1, latent_epochs=prototypes, push_interval=1, classifier_epochs=prototypes),
            push_data_loader=[self.batch] if prototypes else None,
            channels_last=layout is torch.channels_last_3d,
            **trainer_options(model),
        )

    def step(self) -> dict[str, Any]:
        """One trainer iteration of the stage :meth:`enter` put the trainer in (its output dict)."""
        return self.trainer._iteration(self.trainer, self.batch)

    def enter(self, stage: str) -> None:
        """Put the trainer in ``stage`` as its ``EPOCH_STARTED`` handler does (groups, modes, data source)."""
        self.trainer.state.epoch = 1 + STAGES.index(stage)
        self.trainer._start_stage(self.trainer)
        if self.trainer.state.stage.value != stage:
            raise RuntimeError(f"{self.model}: epoch {self.trainer.state.epoch} is {self.trainer.state.stage}")

    def forward(self) -> None:
        """A no-grad eval-mode forward (the evaluator's)."""
        self.net.eval()
        with torch.no_grad():
            self.net(self.images)


class EncoderBench:
    """The reference: the bare truncated encoder at the preset's size."""

    def __init__(self, preset: str, memory_format: str = "channels_last") -> None:
        network = PRESETS[preset]["network"]
        layout = MEMORY_FORMATS[memory_format]
        torch.manual_seed(0)
        self.net = ResNetEncoder(layers=network["encoder_layers"], widths=network["encoder_widths"])
        self.net.to(memory_format=layout)
        self.images = random_batch(preset)["image"].contiguous(memory_format=layout)

    def train(self) -> None:
        self.net.train().zero_grad(set_to_none=True)
        self.net(self.images)[-1].mean().backward()

    def forward(self) -> None:
        self.net.eval()
        with torch.no_grad():
            self.net(self.images)


def _macs(fn: Callable[[], Any]) -> tuple[float, float]:
    """(seconds, MAC) of one call of ``fn`` under ``FlopCounterMode``."""
    with FlopCounterMode(display=False) as counter:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    return seconds, counter.get_total_flops() / 2


def run_preset(
    preset: str, models: list[str], stages: list[str], threads: list[int], repeats: int, memory_format: str
) -> dict[str, Any]:
    """Interleaved timings of the encoder and every (model, stage) at each thread count; returns the JSON entry."""
    encoder = EncoderBench(preset, memory_format)
    benches = {m: ModelBench(m, preset, memory_format) for m in models}
    runs: dict[str, tuple[Callable[[], None] | None, Callable[[], Any]]] = {
        f"{ENCODER}[train]": (None, encoder.train),
        f"{ENCODER}[forward]": (None, encoder.forward),
    }
    for m, bench in benches.items():
        for stage in (s for s in stages_of(m) if s in stages):
            runs[f"{m}[{stage}]"] = (lambda b=bench, s=stage: b.enter(s), bench.step)
        runs[f"{m}[forward]"] = (None, bench.forward)
    macs: dict[str, float] = {}
    times: dict[int, dict[str, list[float]]] = {t: {name: [] for name in runs} for t in threads}
    for t in threads:
        torch.set_num_threads(t)
        for round_ in range(repeats + 1):  # round 0 warms up (and counts MACs once)
            for name, (setup, fn) in runs.items():
                if setup is not None:
                    setup()
                if round_ == 0 and name not in macs:
                    _, macs[name] = _macs(fn)
                    continue
                start = time.perf_counter()
                fn()
                if round_:
                    times[t][name].append(time.perf_counter() - start)
            print(f"[{preset}] {t} thread(s): round {round_}/{repeats}, load {load_average()[0]:.2f}", file=sys.stderr)
    rows = []
    for name in runs:
        reference = f"{ENCODER}[forward]" if name.endswith("[forward]") else f"{ENCODER}[train]"
        row: dict[str, Any] = {"run": name, "mac": macs[name]}
        for t in threads:
            own, ref = times[t][name], times[t][reference]
            ratios = [a / b for a, b in zip(own, ref, strict=True)]
            ratio = statistics.median(ratios)
            row[f"t{t}"] = {
                "median_s": statistics.median(own),
                "times_s": own,
                "ratio": ratio,
                "ratio_range": [min(ratios), max(ratios)],
                "mac_per_s_ratio": (macs[name] / macs[reference]) / ratio,
            }
        rows.append(row)
    return {
        "preset": preset,
        "input": list(encoder.images.shape),
        "repeats": repeats,
        "threads": threads,
        "memory_format": memory_format,
        "machine": machine(),
        "reference": {"train": f"{ENCODER}[train]", "forward": f"{ENCODER}[forward]"},
        "goal_mac_per_s_ratio": GOAL,
        "rows": rows,
    }


def format_table(entry: dict[str, Any]) -> str:
    """Markdown table: per run its GMAC, and per thread count seconds, × encoder (min-max) and MAC/s × encoder."""
    threads = entry["threads"]
    head = "| run | GMAC | " + " | ".join(f"{t} thr s | × enc (range) | MAC/s × enc" for t in threads) + " |"
    lines = [head, "|" + "---|" * (1 + 1 + 3 * len(threads))]
    for r in entry["rows"]:
        cells = [r["run"], f"{r['mac'] / 1e9:.3g}"]
        for t in threads:
            m = r[f"t{t}"]
            cells += [
                f"{m['median_s']:.3f}",
                f"{m['ratio']:.2f} ({m['ratio_range'][0]:.2f}-{m['ratio_range'][1]:.2f})",
                f"{m['mac_per_s_ratio']:.2f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------ peak memory, in fresh subprocesses
def measure_memory(model: str, stage: str, preset: str, threads: int, memory_format: str) -> dict[str, float]:
    """Peak-RSS growth in MiB of a no-grad forward and of one trainer step of ``stage``, in a fresh subprocess."""
    cmd = [sys.executable, __file__, "--_memory", f"{model}[{stage}]", "--preset", preset, "--threads", str(threads)]
    done = subprocess.run(cmd + ["--memory-format", memory_format], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _status_mib(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MiB (Linux; ``ru_maxrss`` would include the parent's peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise KeyError(f"/proc/self/status has no {field}")


def _memory_child(run: str, preset: str, memory_format: str) -> None:
    """Body of the subprocess of :func:`measure_memory`; prints one JSON line."""
    model, _, stage = run.partition("[")
    stage = stage.rstrip("]")
    bench = ModelBench(model, preset, memory_format)
    bench.enter(stage)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS: import-time peaks must not mask the model's
    base = _status_mib("VmRSS")
    bench.forward()
    after_forward = _status_mib("VmHWM")
    bench.enter(stage)
    bench.step()
    print(json.dumps({"forward_mib": after_forward - base, "step_mib": _status_mib("VmHWM") - base}))


def profile(model: str, stage: str, preset: str, memory_format: str, rows: int = 20) -> None:
    """Print the operators taking the most time in one trainer step of ``stage``."""
    bench = ModelBench(model, preset, memory_format)
    bench.enter(stage)
    bench.step()
    with torch.profiler.profile() as prof:
        bench.step()
    print(f"\n## {model} [{preset}] {stage} step, {torch.get_num_threads()} thread(s)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


# ------------------------------------------------------------------ command line
def _parse_list(text: str | None, valid: list[str], option: str, default: list[str]) -> list[str]:
    names = default if text is None else [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(valid))
    if unknown:
        raise SystemExit(f"{option}: unknown {unknown}; valid: {valid}.")
    return list(dict.fromkeys(names))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(BATCH), default="cpu_small")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up round (median)")
    parser.add_argument("--models", help="comma-separated model names (default: all but the alias um_protoshare)")
    parser.add_argument("--stages", help=f"comma-separated subset of {', '.join(STAGES)} (default: all)")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch intra-op thread counts")
    parser.add_argument("--memory-format", choices=sorted(MEMORY_FORMATS), default="channels_last")
    parser.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="peak-RSS subprocesses (first thread count)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny preset, one round, E2 and MProtoNet: a smoke test")
    parser.add_argument("--profile", action="store_true", help="print the top operators of each model and stage")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--_memory", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.repeats = "tiny", 1
        args.models = args.models or "um_protoshare_e2,mprotonet"
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        parser.error(f"--threads takes comma-separated integers; got {args.threads!r}")
    torch.set_num_threads(threads[0])
    if args._memory:
        _memory_child(args._memory, args.preset, args.memory_format)
        return 0
    default_models = [m for m in model_names() if m != ALIAS]
    models = _parse_list(args.models, model_names(), "--models", default_models)
    stages = _parse_list(args.stages, list(STAGES), "--stages", list(STAGES))
    if args.profile:
        for t in threads:
            torch.set_num_threads(t)
            for m in models:
                for stage in (s for s in stages_of(m) if s in stages):
                    profile(m, stage, args.preset, args.memory_format)
        return 0
    entry = run_preset(args.preset, models, stages, threads, args.repeats, args.memory_format)
    if args.memory:
        for row in entry["rows"]:
            model, _, stage = row["run"].partition("[")
            if model != ENCODER and stage.rstrip("]") in STAGES:
                row.update(measure_memory(model, stage.rstrip("]"), args.preset, threads[0], args.memory_format))
    results = json.loads(args.output.read_text()) if args.output.is_file() else {}
    results[args.preset] = entry
    write_json(args.output, results)
    print(
        f"\n### {args.preset}: input {entry['input']}, threads {threads}, {args.memory_format}, median of "
        f"{args.repeats} rounds (ratio range over rounds), load average {entry['machine']['load_average']}"
    )
    print(format_table(entry))
    return 0


if __name__ == "__main__":
    sys.exit(main())
