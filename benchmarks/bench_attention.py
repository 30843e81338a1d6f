"""MAProtoNet's quadruplet attention and multi-scale fusion on CPU, against the formulas they compute.

For every attention and fusion input of MAProtoNet at a preset (recorded from the network), three tables,
interleaved timing:

* **gate convolutions**: each of the four pooled (B, 2, ...) maps through the 2 → 1-channel 7³ convolution, as
  ``F.conv3d`` and as :func:`monai_protoshare.networks.layers.fft_conv3d` (what the gates run on CPU);
  no-grad forward and forward + backward (input and weight gradients), the largest difference from ``F.conv3d``;
* **module**: ``formula``, the attention as MAProtoNet writes it (each gate on a permuted view of the input, with
  ``amax``, ``mean``, ``F.conv3d`` and its own product, then the mean of the four), against ``fused``, the
  library's :class:`~monai_protoshare.networks.QuadrupletAttention` (one pooling pass with a one-pass backward, FFT
  convolutions, the four factors summed before one product), on ``channels_last_3d`` inputs (their layout in
  the model at two or more threads; at one thread the model hands the attention a contiguous map);
* **fusion**: ``formula``, ``cat[avg_pool3d(s1, 3, 2, 1), max_pool3d(s1, 3, 2, 1), s2]`` with PyTorch's pooling,
  against the library's :class:`~monai_protoshare.networks.MultiScaleFeatureFusion` (``box_mean_pool3d``, the
  max-pooled stem's gradient kept channels-last), on inputs in the layouts a channels-last forward gives them at
  this thread count (at one thread layer1's output is contiguous: PyTorch runs 1×1×1 convolutions there as
  ``slow_conv3d``).

Usage::

    python benchmarks/bench_attention.py --preset paper --threads 1
    python benchmarks/bench_attention.py --preset cpu_small --threads 2

Results: tables on stdout and ``benchmarks/results/attention_<preset>.json`` (``--out``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_common import PRESETS, RESULTS_DIR, interleaved, machine, preset_network, print_table

from monai_protoshare.io import write_json
from monai_protoshare.networks import MultiScaleFeatureFusion, QuadrupletAttention
from monai_protoshare.networks.layers import fft_conv3d, fft_conv3d_reference, is_channels_last, max_mean_pool

CONVOLUTIONS = {"conv3d": fft_conv3d_reference, "fft": fft_conv3d}
LAYOUTS = {True: torch.channels_last_3d, False: torch.contiguous_format}
LAYOUT_NAMES = {torch.channels_last_3d: "channels-last", torch.contiguous_format: "contiguous"}


Layouts = tuple[tuple[tuple[int, ...], torch.memory_format], ...]


def module_inputs(preset: str, kind: type[torch.nn.Module]) -> list[Layouts]:
    """The distinct inputs of MAProtoNet's ``kind`` modules at ``preset``: per positional argument its (C, H, W, D)
    and memory format, recorded in one no-grad forward of the channels-last network on a channels-last image."""
    net = preset_network("maprotonet", preset).eval().to(memory_format=torch.channels_last_3d)
    inputs: list[Layouts] = []

    def record(module, args):
        key = tuple((tuple(a.shape[1:]), LAYOUTS[is_channels_last(a)]) for a in args)
        if key not in inputs:
            inputs.append(key)

    hooks = [m.register_forward_pre_hook(record) for m in net.modules() if isinstance(m, kind)]
    image = torch.randn(1, 4, *PRESETS[preset]["spatial_size"]).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        net(image)
    for hook in hooks:
        hook.remove()
    return inputs


def fusion_formula(fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """MAProtoNet's fusion with PyTorch's pooling: ``cat[avg_pool3d(fine, 3, 2, 1), max_pool3d(fine, 3, 2, 1), coarse]``."""
    return torch.cat([F.avg_pool3d(fine, 3, 2, 1), F.max_pool3d(fine, 3, 2, 1), coarse], dim=1)


def formula(att: QuadrupletAttention, x: torch.Tensor) -> torch.Tensor:
    """¼ Σ_g G_g(x), each gate ``t · sigmoid(BN(conv3d([amax_1 t, mean_1 t])))`` on its own permuted view."""

    def gate(g, t):
        pooled = torch.cat([t.amax(dim=1, keepdim=True), t.mean(dim=1, keepdim=True)], dim=1)
        return t * torch.sigmoid(g.bn(F.conv3d(pooled, g.conv.weight, padding=g.conv.padding)))

    out = gate(att.spatial_gate, x)
    for perm, g in zip(att._PERMUTATIONS, att.axis_gates, strict=True):
        out = out + gate(g, x.permute(perm)).permute(perm)
    return out / 4


def time_runs(runs: dict, inputs: list[torch.Tensor], repeats: int) -> list[dict]:
    """No-grad forward and forward + backward (gradients of ``inputs``) of every run, interleaved."""

    def forward_backward(fn):
        out = fn()
        out.backward(torch.ones_like(out))
        for t in inputs:
            t.grad = None

    def no_grad(fn):
        with torch.no_grad():
            fn()

    reference = next(iter(runs))
    rows = {name: {"run": name} for name in runs}
    for label, wrap in (("fwd", no_grad), ("fwd_bwd", forward_backward)):
        timed = {name: (lambda fn=fn, wrap=wrap: wrap(fn)) for name, fn in runs.items()}
        for row in interleaved(timed, repeats, reference):
            rows[row["run"]].update({f"{label}_ms": row["median_s"] * 1e3, f"{label}_ratio": row["ratio"]})
    with torch.no_grad():
        expected = runs[reference]()
        for name, fn in runs.items():
            rows[name]["max_rel_error"] = ((fn() - expected).abs().max() / expected.abs().max()).item()
    return list(rows.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1, bench_models' paper batch)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    convolutions, modules = [], []
    # the attention is timed channels-last (its layout in the model at 2+ threads) whatever layout was recorded
    for ((shape, _),) in module_inputs(args.preset, QuadrupletAttention):
        torch.manual_seed(0)
        att = QuadrupletAttention().train()
        x = torch.randn(args.batch, *shape).contiguous(memory_format=torch.channels_last_3d).requires_grad_(True)
        dims = (1, *(perm[1] for perm in att._PERMUTATIONS))
        with torch.no_grad():
            orders = [(0, 1, 2, 3, 4), *(att._pooled_order(perm) for perm in att._PERMUTATIONS)]
            pooled = [p.permute(order).contiguous() for p, order in zip(max_mean_pool(x, dims), orders, strict=True)]
        weight = att.spatial_gate.conv.weight.detach().clone().requires_grad_(True)
        for gate, p in zip(("C", "H", "W", "D"), pooled, strict=True):
            p.requires_grad_(True)
            runs = {name: (lambda fn=fn, p=p, w=weight: fn(p, w)) for name, fn in CONVOLUTIONS.items()}
            for row in time_runs(runs, [p, weight], args.repeats):
                convolutions.append({"input": "x".join(map(str, p.shape)), "pooled over": gate, **row})
        runs = {"formula": lambda a=att, t=x: formula(a, t), "fused": lambda a=att, t=x: a(t)}
        for row in time_runs(runs, [x], args.repeats):
            modules.append({"input": "x".join(map(str, x.shape)), **row})
    fusions = []
    for (fine_shape, fine_layout), (coarse_shape, coarse_layout) in module_inputs(args.preset, MultiScaleFeatureFusion):
        torch.manual_seed(0)
        fine = torch.relu(torch.randn(args.batch, *fine_shape)).contiguous(memory_format=fine_layout)
        coarse = torch.randn(args.batch, *coarse_shape).contiguous(memory_format=coarse_layout)
        fine.requires_grad_(True), coarse.requires_grad_(True)
        fusion = MultiScaleFeatureFusion((fine_shape[0], coarse_shape[0]))
        runs = {
            "formula": lambda f=fine, c=coarse: fusion_formula(f, c),
            "library": lambda f=fine, c=coarse, m=fusion: m(f, c),
        }
        pairs = ((fine, fine_layout), (coarse, coarse_layout))
        inputs = [f"{'x'.join(map(str, t.shape))} {LAYOUT_NAMES[layout]}" for t, layout in pairs]
        for row in time_runs(runs, [fine, coarse], args.repeats):
            fusions.append({"stem": inputs[0], "stage": inputs[1], **row})
    columns = [
        ("fwd_ms", "fwd ms", ".1f"),
        ("fwd_ratio", "fwd ×", ".2f"),
        ("fwd_bwd_ms", "fwd+bwd ms", ".1f"),
        ("fwd_bwd_ratio", "fwd+bwd ×", ".2f"),
        ("max_rel_error", "max rel. error", ".1e"),
    ]
    threads = torch.get_num_threads()
    print_table(
        convolutions,
        [("input", "pooled input", ""), ("pooled over", "pooled over", ""), ("run", "convolution", ""), *columns],
        f"### Gate convolutions (2 → 1, 7³), `{args.preset}`, {threads} thread(s), median of {args.repeats}",
    )
    print_table(modules, [("input", "input", ""), ("run", "attention", ""), *columns], "### Quadruplet attention")
    print_table(
        fusions,
        [("stem", "stem (s1)", ""), ("stage", "layer1 (s2)", ""), ("run", "fusion", ""), *columns],
        "### Multi-scale fusion",
    )
    out = args.out or RESULTS_DIR / f"attention_{args.preset}.json"
    result = {"convolutions": convolutions, "modules": modules, "fusions": fusions}
    write_json(out, {"machine": machine(), "threads": threads, **result})
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
