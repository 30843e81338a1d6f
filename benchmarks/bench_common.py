"""Helpers shared by the benchmark scripts: preset networks, synthetic cohorts, interleaved timing, tables.

Not a benchmark itself. The scripts run as ``python benchmarks/<script>.py``, so this folder is on ``sys.path``.
Timings on the shared 2-core development machine drift 2-10x with other people's load: every script interleaves
its configurations round by round in one process and reports, besides medians, the median over rounds of each
configuration's time divided by the reference's time in the same round.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from monai_protoshare.networks import build_network
from monai_protoshare.networks.layers import use_reference_kernels

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BUNDLE_DIR = Path(__file__).resolve().parents[1] / "bundles" / "um_protoshare"
SCRATCH_DIR = Path(os.environ.get("BENCH_SCRATCH", "/tmp/monai_protoshare_bench"))

#: network sizes, input grid and batch of the bundle presets (bundles/um_protoshare/configs/presets), plus ``tiny``
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "spatial_size": (128, 128, 96),
        "pixdim": 1.5,
        "batch_size": 32,
        "network": {"encoder_layers": (3, 8), "encoder_widths": (64, 128), "embedding_dim": 128},
    },
    "cpu_small": {
        "spatial_size": (64, 64, 48),
        "pixdim": 3.0,
        "batch_size": 8,
        "network": {"encoder_layers": (1, 1), "encoder_widths": (16, 32), "embedding_dim": 32},
    },
    "tiny": {  # logic checks only (dry runs), not a bundle preset
        "spatial_size": (32, 32, 24),
        "pixdim": 6.0,
        "batch_size": 2,
        "network": {"encoder_layers": (1, 1), "encoder_widths": (4, 8), "embedding_dim": 8},
    },
}
#: MAProtoNet's encoder is cut after layer1 (one residual stage), DESIGN §5
SINGLE_STAGE = {"paper": (3,), "cpu_small": (1,), "tiny": (1,)}


def preset_network(model: str, preset: str) -> torch.nn.Module:
    """``build_network(model)`` at the preset's size (untrained; costs do not depend on the weights)."""
    kwargs = dict(PRESETS[preset]["network"])
    if model == "maprotonet":
        kwargs["encoder_layers"] = SINGLE_STAGE[preset]
        kwargs["encoder_widths"] = kwargs["encoder_widths"][:1]
    return build_network(model, **kwargs)


def add_kernels_option(parser) -> None:
    """``--kernels``: the networks' fast kernels or their plain references (``monai_protoshare.networks.layers``)."""
    parser.add_argument(
        "--kernels",
        choices=("fast", "reference"),
        default="fast",
        help="fast kernels (default) or their plain references: F.interpolate resizes, conv3d gates, aten pooling",
    )


def apply_kernels_option(args) -> str:
    """Selects the kernels from ``--kernels`` (:class:`use_reference_kernels`); returns the choice for the results."""
    use_reference_kernels(args.kernels == "reference")
    return args.kernels


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (NaN where /proc is missing)."""
    try:
        with open("/proc/loadavg") as f:
            return [float(v) for v in f.read().split()[:3]]
    except OSError:
        return [float("nan")] * 3


def machine(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What the numbers were measured on."""
    device = torch.device(device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
    )
    return {
        "device": str(device),
        "device_name": name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": load_average(),
    }


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: torch.device | str = "cpu") -> float:
    """Seconds of ``fn()`` (CUDA work included)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved(
    runs: dict[str, Callable[[], Any]],
    repeats: int,
    reference: str,
    device: torch.device | str = "cpu",
    setup: dict[str, Callable[[], Any]] | None = None,
    label: str = "",
) -> list[dict[str, Any]]:
    """Time every run once per round, round 0 untimed (warm-up), and compare each to ``reference``.

    Args:
        runs: name -> callable, timed in this order every round.
        repeats: timed rounds.
        reference: the run the ratios divide by.
        setup: optional name -> untimed callable run just before that run (e.g. restoring state).

    Returns:
        One row per run: ``median_s``, ``min_s``, ``ratio`` (median over rounds of run / reference in the same
        round) and ``times_s``.
    """
    setup = setup or {}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(repeats + 1):
        for name, fn in runs.items():
            if name in setup:
                setup[name]()
            t = timed(fn, device)
            if round_:
                times[name].append(t)
        print(f"{label}round {round_}/{repeats} done, load {load_average()[0]:.2f}", flush=True)
    rows = []
    for name, t in times.items():
        ratios = [a / b for a, b in zip(t, times[reference], strict=True)]
        rows.append(
            {
                "run": name,
                "median_s": statistics.median(t),
                "min_s": min(t),
                "ratio": statistics.median(ratios),
                "times_s": t,
            }
        )
    return rows


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]], title: str = "") -> None:
    """Markdown table of ``rows``; ``columns`` are (key, header, format spec)."""
    if title:
        print(f"\n{title}")
    print("| " + " | ".join(h for _, h, _ in columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        cells = []
        for key, _, spec in columns:
            value = r.get(key)
            cells.append("" if value is None else format(value, spec) if spec else str(value))
        print("| " + " | ".join(cells) + " |")


def synthetic_cohort(n_cases: int, spacing: float, seed: int = 0) -> Path:
    """A synthetic BraTS-layout cohort under :data:`SCRATCH_DIR`, generated once and reused."""
    from monai_protoshare.data.synthetic import GENERATOR_VERSION, generate_cohort

    path = SCRATCH_DIR / f"cohort_{n_cases}cases_{spacing:g}mm_seed{seed}_v{GENERATOR_VERSION}"
    if not (path / "name_mapping.csv").is_file():
        generate_cohort(path, n_cases=n_cases, seed=seed, spacing=spacing, progress=False)
    return path
