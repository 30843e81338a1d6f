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

Besides the models, ``um_protoshare_e2[stage1]`` is E2 as stage 1 trains it (decoder, fusion and classifier
frozen with ``requires_grad_(False)``): autograd then skips the frozen weights' gradients.

Usage::

    python benchmarks/bench_models.py --preset cpu_small --threads 1
    python benchmarks/bench_models.py --preset paper --repeats 3 --models encoder,um_protoshare_e2,mprotonet
    python benchmarks/bench_models.py --preset cpu_small --profile um_protoshare_e2

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
    """One benchmarked network: a model of the family, the bare encoder, or E2 with stage 1's frozen parts."""

    def __init__(self, name: str, preset: str) -> None:
        self.name, self.preset = name, preset
        cfg = PRESETS[preset]
        self.input_shape = (cfg["batch"], 4, *cfg["size"])

    def build(self) -> torch.nn.Module:
        cfg = PRESETS[self.preset]
        overrides = dict(cfg["overrides"])
        if self.name == ENCODER:
            return ResNetEncoder(
                layers=overrides.get("encoder_layers", (3, 8)), widths=overrides.get("encoder_widths", (64, 128))
            )
        if self.name == "maprotonet":
            overrides.update(cfg["single_stage"])
        net = build_network(self.name.removesuffix("[stage1]"), **overrides)
        if self.name.endswith("[stage1]"):
            groups = net.parameter_groups()
            for group in ("decoder", "classifier"):
                for p in groups[group]:
                    p.requires_grad_(False)
        return net

    def loss(self, net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = net(x)
        if self.name == ENCODER:
            return out[-1].mean()
        return F.cross_entropy(out, torch.arange(x.shape[0]) % out.shape[1])


def forward(net: torch.nn.Module, x: torch.Tensor) -> float:
    """Seconds of one no-grad eval-mode forward."""
    net.eval()
    start = time.perf_counter()
    with torch.no_grad():
        net(x)
    return time.perf_counter() - start


def forward_backward(work: Workload, net: torch.nn.Module, x: torch.Tensor) -> float:
    """Seconds of one train-mode forward + backward (gradients cleared first, outside the timing)."""
    net.train()
    net.zero_grad(set_to_none=True)
    start = time.perf_counter()
    work.loss(net, x).backward()
    return time.perf_counter() - start


def count_macs(work: Workload) -> tuple[float, float]:
    """(forward MAC, forward + backward MAC), counted on the meta device (no arithmetic is done)."""
    with torch.device("meta"):
        net = work.build()
        x = torch.empty(work.input_shape)
        with FlopCounterMode(display=False) as fwd_counter, torch.no_grad():
            net.eval()(x)
        with FlopCounterMode(display=False) as fb_counter:
            work.loss(net.train(), x).backward()
    return fwd_counter.get_total_flops() / 2, fb_counter.get_total_flops() / 2


def measure_memory(work: Workload, threads: int) -> dict[str, float]:
    """Peak-RSS growth in MiB of a no-grad forward and of forward + backward, in a fresh subprocess."""
    cmd = [sys.executable, __file__, "--_memory", work.name, "--preset", work.preset, "--threads", str(threads)]
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


def _memory_child(name: str, preset: str) -> None:
    """Body of the subprocess of :func:`measure_memory`; prints one JSON line."""
    work = Workload(name, preset)
    torch.manual_seed(0)
    net = work.build()
    x = torch.randn(work.input_shape)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS: import-time peaks must not mask the model's
    base = _status_mib("VmRSS")
    forward(net, x)
    after_forward = _status_mib("VmHWM")
    forward_backward(work, net, x)
    print(json.dumps({"forward_mib": after_forward - base, "train_mib": _status_mib("VmHWM") - base, "base_mib": base}))


def profile(work: Workload, rows: int = 15) -> None:
    """Print the operators taking the most time in a forward and in a forward + backward."""
    torch.manual_seed(0)
    net, x = work.build(), torch.randn(work.input_shape)
    forward(net, x)
    forward_backward(work, net, x)
    for label, run in (
        ("forward", lambda: forward(net, x)),
        ("forward+backward", lambda: forward_backward(work, net, x)),
    ):
        with torch.profiler.profile() as prof:
            run()
        print(f"\n## {work.name} [{work.preset}] {label}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def run_preset(preset: str, names: list[str], repeats: int, threads: int, memory: bool) -> dict[str, Any]:
    """Interleaved timing of ``names`` (the encoder first), MAC counts and memory; returns the JSON entry."""
    works = [Workload(n, preset) for n in names]
    torch.manual_seed(0)
    nets = {w.name: w.build() for w in works}
    x = torch.randn(works[0].input_shape)
    times: dict[str, dict[str, list[float]]] = {w.name: {"forward": [], "train": []} for w in works}
    for round_ in range(repeats + 1):  # round 0 warms up (oneDNN primitives, allocator)
        for w in works:
            t_fwd = forward(nets[w.name], x)
            t_fb = forward_backward(w, nets[w.name], x)
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
        flag = " ⚠" if min(r["forward_mac_per_s_ratio"], r["train_mac_per_s_ratio"]) < GOAL else ""
        lines.append(
            f"| {r['model']}{flag} | {r['mac_forward'] / 1e9:.2f} | {r['mac_train'] / 1e9:.2f} | "
            f"{r['forward_mac_ratio']:.2f} | {r['forward_s']:.3f} | {r['forward_time_ratio']:.2f} | "
            f"{r['forward_mac_per_s_ratio']:.2f} | {r['train_s']:.3f} | {r['train_time_ratio']:.2f} | "
            f"{r['train_mac_per_s_ratio']:.2f} | {r.get('forward_mib', float('nan')):.0f} | "
            f"{r.get('train_mib', float('nan')):.0f} |"
        )
    return "\n".join(lines)


def _default_models() -> list[str]:
    """The encoder, every model name but the alias ``um_protoshare`` (E2's configuration), stage-1 E2."""
    assert MODEL_CONFIGURATIONS[ALIAS] is MODEL_CONFIGURATIONS["um_protoshare_e2"]
    return [ENCODER, *(n for n in model_names() if n != ALIAS), STAGE1]


def _parse_models(text: str | None) -> list[str]:
    valid = [ENCODER, *model_names(), STAGE1]
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
        "--models", help=f"comma-separated subset of: {ENCODER}, model names, {STAGE1} (default: all but aliases)"
    )
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
        _memory_child(args._memory, args.preset)
        return
    if args.profile:
        for preset in presets:
            for name in _parse_models(args.profile)[args.profile.split(",")[0].strip() != ENCODER :]:
                profile(Workload(name, preset))
        return
    names = _parse_models(args.models)
    results = json.loads(args.output.read_text()) if args.output.is_file() else {}
    for preset in presets:
        entry = run_preset(preset, names, args.repeats, args.threads, not args.no_memory)
        results[preset] = entry
        write_json(args.output, results)
        print(f"\n### {preset}: input {entry['input']}, {args.threads} thread(s), median of {args.repeats}")
        print(format_table(entry))


if __name__ == "__main__":
    main()
