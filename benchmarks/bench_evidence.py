"""Time to export one case's prototype evidence, from the NIfTI files to the written overlays, per preset.

Stages, each timed on its own (the per-case cost of :func:`monai_protoshare.workflows.export_evidence.export_evidence`):

1. ``preprocess``: load the four sequences and run the inference preprocessing;
2. ``explain``: :func:`~monai_protoshare.explain.evidence.explain_cases` (one forward, plus one batched forward of
   the four sequence-ablated copies);
3. ``write``: invert the preprocessing and write the native-space NIfTI maps, label overlay and ``report.json``;
4. ``figure``: render and save the Fig.-5-style case figure.

Once per export (not per case): one forward per reference case for the sharedness, and the prototype gallery.
Networks are untrained (the cost does not depend on the weights); the case is a synthetic BraTS-like case at
2 mm (120 x 120 x 78 voxels). Timings on shared CPUs are noisy: medians of ``--repeats`` runs after a warm-up.

Usage:
    python benchmarks/bench_evidence.py [--presets cpu_small paper] [--repeats 3] [--threads 2] [--device cpu]
        [--out benchmarks/results/evidence.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from monai_protoshare.data.brats import load_brats_datalist
from monai_protoshare.data.synthetic import generate_cohort
from monai_protoshare.data.transforms import inference_transforms
from monai_protoshare.explain.evidence import explain_cases, prototype_catalogue
from monai_protoshare.explain.evidence_writer import write_case_evidence
from monai_protoshare.explain.figures import case_figure, save_figure
from monai_protoshare.io import write_json
from monai_protoshare.workflows.export_evidence import bundle_parser

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "um_protoshare"
STAGES = ("preprocess", "explain", "write", "figure")


def _timed(device: torch.device, fn, *args, **kwargs):
    """(result, seconds) of ``fn(*args, **kwargs)``."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def bench_preset(preset: str, item: dict, work: Path, repeats: int, device: torch.device, top_k: int) -> dict:
    """Median seconds per stage for one case with the ``preset``'s network and grid."""
    config = bundle_parser(BUNDLE, preset)
    settings = {key: config.get_parsed_content(key) for key in ("spatial_size", "pixdim")}
    network = config.get_parsed_content("network_def").to(device).eval()
    transform = inference_transforms(settings["spatial_size"], settings["pixdim"])
    catalogue = prototype_catalogue(network)
    times: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for run in range(repeats + 1):  # run 0 warms up
        data, t_pre = _timed(device, transform, dict(item))
        image = data["image"]
        [evidence], t_explain = _timed(
            device, explain_cases, network, image.as_tensor()[None], [item["subject_id"]], top_k=top_k
        )
        out = work / f"{preset}_{run}"
        _, t_write = _timed(
            device, write_case_evidence, evidence, catalogue, image, transform, out, item["image"][1], figure=False
        )
        figure, t_render = _timed(device, case_figure, image, evidence, catalogue)
        _, t_save = _timed(device, save_figure, figure, out / "case_figure.png")
        if run:
            for stage, t in zip(STAGES, (t_pre, t_explain, t_write, t_render + t_save), strict=True):
                times[stage].append(t)
    with torch.no_grad():
        _, t_forward = _timed(device, network, image.as_tensor()[None].to(device))
    medians = {stage: statistics.median(t) for stage, t in times.items()}
    return {
        "preset": preset,
        "spatial_size": list(settings["spatial_size"]),
        "pixdim": settings["pixdim"],
        "parameters": sum(p.numel() for p in network.parameters()),
        "median_s": medians,
        "total_s": sum(medians.values()),
        "reference_forward_s": t_forward,
        "times_s": times,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["cpu_small", "paper"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paper_repeats", type=int, default=1, help="repeats for the paper preset (slow on CPU)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--top_k", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "evidence.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_evidence_") as tmp:
        cohort = generate_cohort(Path(tmp) / "cohort", n_cases=1, seed=0, spacing=2.0)
        [item] = load_brats_datalist(cohort, cache=False)
        for preset in args.presets:
            repeats = args.paper_repeats if preset == "paper" else args.repeats
            rows.append(bench_preset(preset, item, Path(tmp) / "out", repeats, device, args.top_k))
    print(f"evidence export of one case (synthetic, 2 mm, 120x120x78), device {device}, {args.threads} threads")
    print(f"{'preset':<10} {'grid':<14} " + " ".join(f"{s:>10}" for s in STAGES) + f" {'total s':>9} {'fwd s':>7}")
    for r in rows:
        grid = "x".join(str(n) for n in r["spatial_size"])
        stages = " ".join(f"{r['median_s'][s]:>10.2f}" for s in STAGES)
        print(f"{r['preset']:<10} {grid:<14} {stages} {r['total_s']:>9.2f} {r['reference_forward_s']:>7.2f}")
    write_json(
        args.out,
        {
            "what": "seconds per case, NIfTI files in -> native-space overlays, report and figure out (medians)",
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else f"{platform.machine()} CPU, {os.cpu_count()} cores",
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "top_k": args.top_k,
            "rows": rows,
        },
    )
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
