"""Cost of one case's IDS curve (App. D.4) as a ratio to 51 single-case forwards of the same network.

The IDS needs the predictions at 51 deletion steps; done naively that is 51 forwards of one case. Our
``compute_incremental_deletion`` batches the steps and skips what does not change, so the goal is a ratio <= 1.0.
Both are timed in the same run, interleaved, a few repeats, and the median is reported (timings on shared CPUs are
noisy: compare ratios, not seconds).

``--network cpu_small`` replaces the small CNN by UM-ProtoShare E2 at the ``cpu_small`` size (channels-last, as the
evaluator runs it); its results go to ``ids_cpu_small.json``.

Usage:
    python benchmarks/bench_ids.py [--repeats 5] [--device cpu] [--threads 2] [--out benchmarks/results/ids.json]
    python benchmarks/bench_ids.py --network cpu_small --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from monai_protoshare.io import write_json
from monai_protoshare.metrics import compute_incremental_deletion

SHAPE = (4, 64, 64, 48)
STEPS = 50
SMOOTH, RELU = "smooth map (no ties)", "ReLU map (zeros tie)"
# (map, batch size, step-0 predictions given); 17: the 51 inputs of one case in three forwards
VARIANTS = [(SMOOTH, 1, False), (SMOOTH, 8, False), (SMOOTH, 17, False), (SMOOTH, 8, True), (RELU, 8, False)]


def small_cnn() -> nn.Module:
    """A small 3D CNN: three strided 3x3x3 convolutions, global pooling, a linear classifier (2 classes)."""
    return nn.Sequential(
        nn.Conv3d(4, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv3d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv3d(32, 64, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(64, 2),
    )


def build_network(name: str) -> nn.Module:
    """The network whose forwards are counted: the small CNN, or E2 at the ``cpu_small`` size (channels-last)."""
    if name == "small_cnn":
        return small_cnn()
    from bench_common import preset_network

    return preset_network("um_protoshare_e2", name).to(memory_format=torch.channels_last_3d)


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--network", choices=["small_cnn", "cpu_small"], default="small_cnn")
    parser.add_argument("--out", type=Path, help="default: results/ids.json (small_cnn), results/ids_<network>.json")
    args = parser.parse_args()
    results = Path(__file__).parent / "results"
    out = args.out or results / ("ids.json" if args.network == "small_cnn" else f"ids_{args.network}.json")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = build_network(args.network).to(device).eval()
    image = torch.rand(1, *SHAPE, device=device)
    label = torch.tensor([1])
    # a smooth coarse map (no ties: every step changes the input, the worst case for reuse), and a Grad-CAM-like
    # map whose ReLU zeros (60 % of the coarse map) tie, so the steps past their quantile are not forwarded
    smooth = torch.rand(1, 1, 8, 8, 6, device=device)
    relu_like = (smooth - smooth.flatten().quantile(0.6)).clamp_min(0)
    cases = {SMOOTH: smooth, RELU: relu_like}
    with torch.no_grad():
        initial = net(image)  # an evaluator has these already

    def single_forwards() -> None:
        with torch.no_grad():
            for _ in range(STEPS + 1):
                net(image)

    forwarded: list[int] = []

    def predict(x: torch.Tensor) -> torch.Tensor:
        forwarded.append(len(x))
        return net(x)

    runs = {"51 single forwards": single_forwards}
    for map_name, bs, step0 in VARIANTS:
        runs[f"IDS, {map_name}, batch {bs}{', step 0 given' if step0 else ''}"] = (
            lambda a=cases[map_name], bs=bs, step0=step0: compute_incremental_deletion(
                predict, image, a, label, steps=STEPS, batch_size=bs, initial_predictions=initial if step0 else None
            )
        )

    samples = {}
    for name, fn in runs.items():  # warm-up, counting the inputs each run forwards
        forwarded.clear()
        fn()
        samples[name] = sum(forwarded) or STEPS + 1
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit every variant alike
        for name, fn in runs.items():
            times[name].append(_timed(fn, device))
    baseline = statistics.median(times["51 single forwards"])
    rows = [
        {
            "run": name,
            "forwards": samples[name],
            "median_s": statistics.median(t),
            "ratio": statistics.median(t) / baseline,
        }
        for name, t in times.items()
    ]
    width = max(len(r["run"]) for r in rows)
    print(
        f"IDS cost for one case {tuple(SHAPE)}, {STEPS} steps, network {args.network}, device {device}, "
        f"{torch.get_num_threads()} thread(s), median of {args.repeats}, load average {os.getloadavg()}"
    )
    print(f"{'run':<{width}}  {'forwards':>8}  {'median s':>9}  {'ratio':>6}")
    for r in rows:
        print(f"{r['run']:<{width}}  {r['forwards']:>8}  {r['median_s']:>9.4f}  {r['ratio']:>6.3f}")
    write_json(
        out,
        {
            "network": args.network,
            "load_average": os.getloadavg(),
            "shape": SHAPE,
            "steps": STEPS,
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else f"{platform.machine()} CPU, {os.cpu_count()} cores",
            "threads": torch.get_num_threads(),
            "repeats": args.repeats,
            "torch": torch.__version__,
            "rows": rows,
            "times_s": times,
        },
    )
    print(f"written {out}")


if __name__ == "__main__":
    main()
