"""Trilinear resizing in one training step: ``F.interpolate`` against ``separable_resize``, forward + backward.

The resizes of a stage-1 step (the decoder's upsamplings, the mapping loss's rescaled features and masks) are
recorded from one real forward pass of the model, then each is timed, interleaved, with every implementation:

* ``interpolate``: ``F.interpolate(mode="trilinear")`` as the model called it before (on CUDA under bf16 autocast,
  which runs it in fp32 on contiguous tensors);
* ``interpolate_native`` (CUDA only): ``F.interpolate`` with autocast off, in the tensor's own dtype;
* ``separable``: :func:`monai_protoshare.networks.layers.separable_resize` (dtype and memory format kept).

It also reports each implementation's largest difference from the fp32 ``F.interpolate``, relative to the
output's scale. Usage::

    python benchmarks/bench_resample.py --preset paper --batch 32            # on a CUDA machine
    python benchmarks/bench_resample.py --device cpu --preset cpu_small --threads 2

Results: a table on stdout and ``benchmarks/results/resample_<device>_<preset>.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_common import PRESETS, RESULTS_DIR, interleaved, machine, preset_network, print_table
from torch.overrides import TorchFunctionMode

from monai_protoshare.io import write_json
from monai_protoshare.losses import MappingLoss
from monai_protoshare.networks.layers import is_channels_last, separable_resize, use_reference_kernels


class TrilinearResizes(TorchFunctionMode):
    """Records the input and arguments of every trilinear ``F.interpolate`` run while it is active.

    Under the reference kernels every ``resize_trilinear`` of the networks and losses is such a call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.interpolate and kwargs.get("mode") == "trilinear":
            t = args[0]
            self.calls.append(
                {
                    "shape": list(t.shape[1:]),
                    "dtype": t.dtype,
                    "channels_last": is_channels_last(t),
                    "size": [int(n) for n in kwargs["size"]],
                    "align_corners": bool(kwargs.get("align_corners")),
                }
            )
        return func(*args, **kwargs)


def record_calls(model: str, preset: str, device: torch.device) -> list[dict]:
    """The resizes of one forward pass plus mapping loss at batch 1: input shape, dtype, layout, size, corners."""
    net = preset_network(model, preset).to(device).to(memory_format=torch.channels_last_3d)
    x = torch.randn(1, 4, *PRESETS[preset]["spatial_size"], device=device).to(memory_format=torch.channels_last_3d)
    amp = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    with torch.no_grad(), amp, use_reference_kernels(), TrilinearResizes() as resizes:
        MappingLoss()(net, net.explain(x))
    return resizes.calls


def implementations(device: torch.device) -> dict:
    def interpolate(x, size, corners):
        amp = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
        with amp:
            return F.interpolate(x, size=size, mode="trilinear", align_corners=corners)

    def native(x, size, corners):
        with torch.autocast("cuda", enabled=False):
            return F.interpolate(x, size=size, mode="trilinear", align_corners=corners)

    impls = {"interpolate": interpolate, "separable": separable_resize}
    if device.type == "cuda":
        impls["interpolate_native"] = native
    return impls


def time_call(call: dict, batch: int, impls: dict, repeats: int, device: torch.device) -> list[dict]:
    """Forward + backward of one recorded resize with every implementation, interleaved; errors against fp32."""
    x = torch.randn(batch, *call["shape"], device=device).to(call["dtype"])
    if call["channels_last"]:
        x = x.to(memory_format=torch.channels_last_3d)
    x.requires_grad_(True)
    size, corners = call["size"], call["align_corners"]
    with torch.no_grad():
        reference = F.interpolate(x.float(), size=size, mode="trilinear", align_corners=corners)
    scale = reference.abs().max().item()
    upstream = {}

    def step(name: str) -> None:
        out = impls[name](x, size, corners)
        if name not in upstream:
            upstream[name] = torch.randn_like(out)
        out.backward(upstream[name])
        x.grad = None

    rows = []
    for row in interleaved({name: (lambda n=name: step(n)) for name in impls}, repeats, "interpolate", device):
        with torch.no_grad():
            error = (impls[row["run"]](x, size, corners).float() - reference).abs().max().item() / scale
        rows.append(
            {
                "input": "x".join(str(n) for n in (batch, *call["shape"])),
                "size": "x".join(str(n) for n in size),
                "align_corners": corners,
                "dtype": str(call["dtype"]).removeprefix("torch."),
                "run": row["run"],
                "fwd_bwd_ms": row["median_s"] * 1e3,
                "ratio": row["ratio"],
                "max_rel_error": error,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="um_protoshare_e2")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    parser.add_argument("--batch", type=int, help="batch size (default: the preset's)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (CPU)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch or PRESETS[args.preset]["batch_size"]
    impls = implementations(device)
    rows, totals = [], dict.fromkeys(impls, 0.0)
    for i, call in enumerate(record_calls(args.model, args.preset, device)):
        torch.manual_seed(i)
        for row in time_call(call, batch, impls, args.repeats, device):
            totals[row["run"]] += row["fwd_bwd_ms"] / 1e3
            rows.append({"call": i, **row})
    columns = [
        ("call", "call", ""),
        ("input", "input", ""),
        ("size", "output size", ""),
        ("align_corners", "align_corners", ""),
        ("dtype", "dtype", ""),
        ("run", "implementation", ""),
        ("fwd_bwd_ms", "fwd+bwd ms", ".2f"),
        ("ratio", "× interpolate", ".3f"),
        ("max_rel_error", "max error / max|out|", ".1e"),
    ]
    title = f"Resizes of one stage-1 step, {args.model}, preset {args.preset}, batch {batch}, {machine(device)['device_name']}"
    print_table(rows, columns, title)
    total_rows = [{"run": k, "ms": v * 1e3, "ratio": v / totals["interpolate"]} for k, v in totals.items()]
    print_table(
        total_rows, [("run", "implementation", ""), ("ms", "all resizes, ms", ".1f"), ("ratio", "× interpolate", ".3f")]
    )
    out = args.out or RESULTS_DIR / f"resample_{device.type}_{args.preset}.json"
    write_json(
        out,
        {
            "machine": machine(device),
            "model": args.model,
            "preset": args.preset,
            "batch": batch,
            "rows": rows,
            "totals": total_rows,
        },
    )
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
