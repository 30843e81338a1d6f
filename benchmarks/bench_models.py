"""Cost of every model of Table 1 relative to the bare truncated encoder (issue 3 "Benchmark", issue 11 item 1).

For each model of :func:`monai_protoshare.networks.model_names` and each preset it measures

- wall time of a no-grad forward (eval mode) and of forward + backward (train mode, cross-entropy on the
  logits), warm-up round then ``--repeats`` timed rounds; models are interleaved round by round with the
  bare encoder (ResNet-152 cut after layer2 at the preset's size), and each time ratio is the median over
  rounds of (model time / encoder time in the same round), so load swings on a shared machine cancel;
- multiply-accumulates (MAC = FLOPs / 2 of convolutions and matrix products, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` on the meta device) of the forward and of forward + backward;
- achieved MAC/s relative to the encoder's: ``(MAC / t) / (MAC_enc / t_enc)``; the goal is >= 0.85;
- peak memory: growth of the peak resident set (``VmHWM``, reset before the model runs) over a no-grad
  forward and over forward + backward, each model in a fresh subprocess.

Besides the models, three rows answer what the training stages really compute (issue 11 item 1):

- ``um_protoshare_e2[stage1]``: E2 as stage 1 trains it (decoder, fusion and classifier frozen with
  ``requires_grad_(False)``, decoder and fusion in eval mode): autograd skips the frozen weights' gradients, but
  the decoder's input gradients are still needed (the trained encoder lies upstream of it);
- ``um_protoshare_e2[stage3]``: stage 3 on augmented batches (``classifier_inputs="augmented"``): a no-grad
  eval-mode forward to the similarities, then the classifier's forward + backward;
- ``um_protoshare_e2[stage3-cached]``: stage 3 on the push's cached similarities (``classifier_inputs="cached"``):
  the classifier alone on (B, 30) similarities; nothing before it is recomputed.

Networks and inputs use ``torch.channels_last_3d`` as the trainer and evaluator do (``--memory-format``).

Usage::

    python benchmarks/bench_models.py --preset cpu_small --threads 1
    python benchmarks/bench_models.py --preset paper --repeats 3 --models encoder,um_protoshare_e2,mprotonet
    python benchmarks/bench_models.py --preset paper --threads 1 --no-memory --models fpn_iaia_bl --output /tmp/fpn.json
    python benchmarks/bench_models.py --preset cpu_small --profile um_protoshare_e2
    python benchmarks/bench_models.py --preset cpu_small --memory-format contiguous --no-memory

Results are merged into ``benchmarks/results/models.json`` (one entry per preset).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from monai_protoshare.io import write_json
from monai_protoshare.networks import MODEL_CONFIGURATIONS, ResNetEncoder, build_network, model_names

RESULTS = Path(__file__).resolve().parent / "results" / "models.json"
ENCODER = "encoder"
STAGE1 = "um_protoshare_e2[stage1]"
STAGE3 = "um_protoshare_e2[stage3]"
STAGE3_CACHED = "um_protoshare_e2[stage3-cached]"
STAGE_ROWS = (STAGE1, STAGE3, STAGE3_CACHED)
MEMORY_FORMATS = {"channels_last": torch.channels_last_3d, "contiguous": torch.contiguous_format}
ALIAS = "um_protoshare"
GOAL = 0.85

# DESIGN §4; MAProtoNet's encoder is cut after layer1 (one residual stage)
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "batch": 1,
        "size": (128, 128, 96),
        "overrides": {},
        "single_stage": {"encoder_layers": (3,), "encoder_widths": (64,)},
    },
    "cpu_small": {
        "batch": 8,
        "size": (64, 64, 48),
        "overrides": {"encoder_layers": (1, 1), "encoder_widths": (16, 32), "embedding_dim": 32},
        "single_stage": {"encoder_layers": (1,), "encoder_widths": (16,)},
    },
}


class Workload:
    """One benchmarked network: a model of the family, the bare encoder, or E2 as one training stage runs it."""

    def __init__(self, name: str, preset: str, memory_format: str = "channels_last") -> None:
        self.name, self.preset, self.memory_format = name, preset, memory_format
        self.model, _, variant = name.partition("[")
        self.stage = variant.rstrip("]")
        cfg = PRESETS[preset]
        self.input_shape = (cfg["batch"], 4, *cfg["size"])

    def build(self) -> torch.nn.Module:
        cfg = PRESETS[self.preset]
        overrides = dict(cfg["overrides"])
        if self.name == ENCODER:
            net = ResNetEncoder(
                layers=overrides.get("encoder_layers", (3, 8)), widths=overrides.get("encoder_widths", (64, 128))
            )
            return net.to(memory_format=MEMORY_FORMATS[self.memory_format])
        if self.name == "maprotonet":
            overrides.update(cfg["single_stage"])
        net = build_network(self.model, **overrides)
        trained = {"stage1": ("encoder", "add_ons", "mapping", "prototypes"), "": None}.get(self.stage, ("classifier",))
        if trained is not None:  # the trainer's TRAINABLE_GROUPS of that stage
            for group, params in net.parameter_groups().items():
                for p in params:
                    p.requires_grad_(group in trained)
        return net.to(memory_format=MEMORY_FORMATS[self.memory_format])

    def prepare(self, net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The tensor this workload consumes: the images, or for stage 3 on cached inputs their similarities."""
        if self.stage != "stage3-cached":
            return x.contiguous(memory_format=MEMORY_FORMATS[self.memory_format])
        with torch.no_grad():
            return net.eval().explain(x, online_cam=False).similarities

    def set_mode(self, net: torch.nn.Module, training: bool) -> None:
        """Module modes of a no-grad forward (eval) or of one training step of this workload's stage."""
        net.train(training and not self.stage.startswith("stage3"))
        if training and self.stage == "stage1":
            for frozen in (net.backbone.decoder, net.backbone.fusions):
                frozen.eval()

    def run(self, net: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """Output of a forward: encoder scales, logits, or the classifier's logits on cached similarities."""
        if self.stage == "stage3-cached":
            return net.classifier(inputs)
        return net(inputs)

    def loss(self, net: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        if self.name == ENCODER:
            return net(inputs)[-1].mean()
        if self.stage == "stage3":
            with torch.no_grad():
                inputs = net.explain(inputs, online_cam=False).similarities
        logits = net.classifier(inputs) if self.stage.startswith("stage3") else net(inputs)
        return F.cross_entropy(logits, torch.arange(inputs.shape[0]) % logits.shape[1])


def forward(work: Workload, net: torch.nn.Module, inputs: torch.Tensor) -> float:
    """Seconds of one no-grad eval-mode forward."""
    work.set_mode(net, training=False)
    start = time.perf_counter()
    with torch.no_grad():
        work.run(net, inputs)
    return time.perf_counter() - start


def forward_backward(work: Workload, net: torch.nn.Module, inputs: torch.Tensor) -> float:
    """Seconds of one forward + backward in the workload's training modes (gradients cleared first, untimed)."""
    work.set_mode(net, training=True)
    net.zero_grad(set_to_none=True)
    start = time.perf_counter()
    work.loss(net, inputs).backward()
    return time.perf_counter() - start


def count_macs(work: Workload) -> tuple[float, float]:
    """(forward MAC, forward + backward MAC), counted on the meta device (no arithmetic is done)."""
    with torch.device("meta"):
        net = work.build()
        inputs = work.prepare(net, torch.empty(work.input_shape))
        work.set_mode(net, training=False)
        with FlopCounterMode(display=False) as fwd_counter, torch.no_grad():
            work.run(net, inputs)
        work.set_mode(net, training=True)
        with FlopCounterMode(display=False) as fb_counter:
            work.loss(net, inputs).backward()
    return fwd_counter.get_total_flops() / 2, fb_counter.get_total_flops() / 2


def measure_memory(work: Workload, threads: int) -> dict[str, float]:
    """Peak-RSS growth in MiB of a no-grad forward and of forward + backward, in a fresh subprocess."""
    cmd = [sys.executable, __file__, "--_memory", work.name, "--preset", work.preset, "--threads", str(threads)]
    cmd += ["--memory-format", work.memory_format]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _status_mib(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MiB (Linux). ``ru_maxrss`` would not do: a child started by
    fork + exec inherits the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise KeyError(f"/proc/self/status has no {field}")


def _memory_child(name: str, preset: str, memory_format: str) -> None:
    """Body of the subprocess of :func:`measure_memory`; prints one JSON line."""
    work = Workload(name, preset, memory_format)
    torch.manual_seed(0)
    net = work.build()
    inputs = work.prepare(net, torch.randn(work.input_shape))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS: import-time peaks must not mask the model's
    base = _status_mib("VmRSS")
    forward(work, net, inputs)
    after_forward = _status_mib("VmHWM")
    forward_backward(work, net, inputs)
    print(json.dumps({"forward_mib": after_forward - base, "train_mib": _status_mib("VmHWM") - base, "base_mib": base}))


def profile(work: Workload, rows: int = 15) -> None:
    """Print the operators taking the most time in a forward and in a forward + backward."""
    torch.manual_seed(0)
    net = work.build()
    x = work.prepare(net, torch.randn(work.input_shape))
    forward(work, net, x)
    forward_backward(work, net, x)
    for label, run in (
        ("forward", lambda: forward(work, net, x)),
        ("forward+backward", lambda: forward_backward(work, net, x)),
    ):
        with torch.profiler.profile() as prof:
            run()
        print(f"\n## {work.name} [{work.preset}] {label}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def run_preset(
    preset: str, names: list[str], repeats: int, threads: int, memory: bool, memory_format: str = "channels_last"
) -> dict[str, Any]:
    """Interleaved timing of ``names`` (the encoder first), MAC counts and memory; returns the JSON entry."""
    works = [Workload(n, preset, memory_format) for n in names]
    torch.manual_seed(0)
    nets = {w.name: w.build() for w in works}
    x = torch.randn(works[0].input_shape)
    inputs = {w.name: w.prepare(nets[w.name], x) for w in works}
    times: dict[str, dict[str, list[float]]] = {w.name: {"forward": [], "train": []} for w in works}
    for round_ in range(repeats + 1):  # round 0 warms up (oneDNN primitives, allocator)
        for w in works:
            t_fwd = forward(w, nets[w.name], inputs[w.name])
            t_fb = forward_backward(w, nets[w.name], inputs[w.name])
            if round_:
                times[w.name]["forward"].append(t_fwd)
                times[w.name]["train"].append(t_fb)
        print(f"[{preset}] round {round_}/{repeats} done", file=sys.stderr, flush=True)
    rows = []
    for w in works:
        mac_fwd, mac_fb = count_macs(w)
        row = {
            "model": w.name,
            "params": sum(p.numel() for p in nets[w.name].parameters()),
            "mac_forward": mac_fwd,
            "mac_train": mac_fb,
            "forward_s": statistics.median(times[w.name]["forward"]),
            "train_s": statistics.median(times[w.name]["train"]),
            "forward_runs_s": times[w.name]["forward"],
            "train_runs_s": times[w.name]["train"],
        }
        if memory:
            row.update(measure_memory(w, threads))
        rows.append(row)
    add_ratios(rows)
    return {
        "preset": preset,
        "input": list(works[0].input_shape),
        "repeats": repeats,
        "threads": threads,
        "memory_format": memory_format,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "load_average": list(_load_average()),
        "reference": ENCODER,
        "goal_mac_per_s_ratio": GOAL,
        "rows": rows,
    }


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Ratios to the encoder (``rows[0]``): time = median over rounds of the same-round time ratio (load swings
    between rounds cancel), MAC = MAC ratio, achieved MAC/s = MAC ratio / time ratio."""
    ref = rows[0]
    for row in rows:
        for kind in ("forward", "train"):
            pairs = zip(row[f"{kind}_runs_s"], ref[f"{kind}_runs_s"], strict=True)
            time_ratio = statistics.median(t / t_ref for t, t_ref in pairs)
            mac_ratio = row[f"mac_{kind}"] / ref[f"mac_{kind}"]
            row[f"{kind}_time_ratio"] = time_ratio
            row[f"{kind}_mac_ratio"] = mac_ratio
            row[f"{kind}_mac_per_s_ratio"] = mac_ratio / time_ratio


def _load_average() -> tuple[float, float, float]:
    try:
        with open("/proc/loadavg") as f:
            return tuple(float(v) for v in f.read().split()[:3])
    except OSError:
        return (float("nan"),) * 3


def format_table(entry: dict[str, Any]) -> str:
    """Markdown table of one preset's results."""
    head = (
        "| model | GMAC fwd | GMAC f+b | MAC × enc | fwd s | fwd × enc | fwd MAC/s × enc | f+b s | f+b × enc "
        "| f+b MAC/s × enc | ΔRSS fwd MiB | ΔRSS f+b MiB |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in entry["rows"]:
        below = min(r["forward_mac_per_s_ratio"], r["train_mac_per_s_ratio"]) < GOAL
        flag = " ⚠" if below and r["model"] != STAGE3_CACHED else ""  # MAC/s of a (B, 30) x (30, 2) product: n/a
        lines.append(
            f"| {r['model']}{flag} | {r['mac_forward'] / 1e9:.2f} | {r['mac_train'] / 1e9:.2f} | "
            f"{r['forward_mac_ratio']:.2f} | {r['forward_s']:.3f} | {r['forward_time_ratio']:.2f} | "
            f"{r['forward_mac_per_s_ratio']:.2f} | {r['train_s']:.3f} | {r['train_time_ratio']:.2f} | "
            f"{r['train_mac_per_s_ratio']:.2f} | {r.get('forward_mib', float('nan')):.0f} | "
            f"{r.get('train_mib', float('nan')):.0f} |"
        )
    return "\n".join(lines)


def _default_models() -> list[str]:
    """The encoder, every model name but the alias ``um_protoshare`` (E2's configuration), E2's stage rows."""
    assert MODEL_CONFIGURATIONS[ALIAS] is MODEL_CONFIGURATIONS["um_protoshare_e2"]
    return [ENCODER, *(n for n in model_names() if n != ALIAS), *STAGE_ROWS]


def _parse_models(text: str | None) -> list[str]:
    valid = [ENCODER, *model_names(), *STAGE_ROWS]
    names = _default_models() if text is None else [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(valid))
    if unknown:
        raise ValueError(f"--models: unknown {unknown}; valid: {valid}.")
    return [ENCODER] + [n for n in dict.fromkeys(names) if n != ENCODER]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=["paper", "cpu_small", "both"], default="cpu_small")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up round (median)")
    parser.add_argument(
        "--models", help=f"comma-separated subset of: {ENCODER}, model names, {', '.join(STAGE_ROWS)} (default: all)"
    )
    parser.add_argument("--memory-format", choices=sorted(MEMORY_FORMATS), default="channels_last")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--profile", help="print the top operators of these comma-separated models instead")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--_memory", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    torch.set_num_threads(args.threads)
    presets = ["paper", "cpu_small"] if args.preset == "both" else [args.preset]
    if args._memory:
        _memory_child(args._memory, args.preset, args.memory_format)
        return
    if args.profile:
        for preset in presets:
            for name in _parse_models(args.profile)[args.profile.split(",")[0].strip() != ENCODER :]:
                profile(Workload(name, preset, args.memory_format))
        return
    names = _parse_models(args.models)
    results = json.loads(args.output.read_text()) if args.output.is_file() else {}
    for preset in presets:
        entry = run_preset(preset, names, args.repeats, args.threads, not args.no_memory, args.memory_format)
        results[preset] = entry
        write_json(args.output, results)
        print(
            f"\n### {preset}: input {entry['input']}, {args.threads} thread(s), {args.memory_format}, median of "
            f"{args.repeats}, load average {entry['load_average']}"
        )
        print(format_table(entry))


if __name__ == "__main__":
    main()
