"""Cost of the push (stage 2, eq. 20) as a ratio to one no-grad pass over the same batches (issue 11 item 2).

The floor of :func:`~monai_protoshare.explain.push.push_prototypes` is one no-grad, eval-mode
``network.explain`` over the un-augmented training fold: the push needs exactly the descriptors (eq. 14) and
attention maps of that pass. Everything else it does (cosine similarities to the bank, the running best per
prototype, the map-mass box of each new best, the stage-3 similarity cache) is overhead; the goal is a ratio
<= 1.1. Both are run on the same in-memory batches (data loading is :mod:`bench_data`'s business), interleaved
round by round; the prototype bank is restored before every push (untimed) so each push does the same work.

Also reported: how many map-mass boxes (:func:`~monai_protoshare.explain.push.map_mass_box`) a push computes
and their share of its time, measured in the warm-up round.

Usage::

    python benchmarks/bench_push.py --preset cpu_small --threads 1
    python benchmarks/bench_push.py --preset cpu_small --models um_protoshare_e2 --cases 64 --repeats 5

Results: ``benchmarks/results/push.json`` (one entry per preset).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
from bench_common import PRESETS, RESULTS_DIR, interleaved, machine, preset_network, print_table

import monai_protoshare.explain.push as push_module
from monai_protoshare.io import write_json

GOAL = 1.1
DEFAULT_CASES = {"paper": 4, "cpu_small": 32, "tiny": 8}
DEFAULT_BATCH = {"paper": 2, "cpu_small": 8, "tiny": 4}
MEMORY_FORMATS = {"channels_last": torch.channels_last_3d, "contiguous": torch.contiguous_format}


def make_batches(preset: str, cases: int, batch_size: int, seed: int = 0) -> list[dict[str, Any]]:
    """In-memory batches like the push data loader's: ``image`` (b, 4, H, W, D), ``label``, ``subject_id``."""
    g = torch.Generator().manual_seed(seed)
    size = PRESETS[preset]["spatial_size"]
    batches = []
    for start in range(0, cases, batch_size):
        n = min(batch_size, cases - start)
        batches.append(
            {
                "image": torch.randn(n, 4, *size, generator=g),
                "label": torch.arange(start, start + n) % 2,
                "subject_id": [f"case{i:03d}" for i in range(start, start + n)],
            }
        )
    return batches


class _BoxCounter:
    """Wraps ``push.map_mass_box`` to count its calls and their time."""

    def __init__(self) -> None:
        self.calls, self.seconds = 0, 0.0
        self.original = push_module.map_mass_box

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.original(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


def bench_model(model: str, preset: str, batches: list[dict[str, Any]], repeats: int, memory_format: str) -> dict:
    torch.manual_seed(0)
    net = preset_network(model, preset).to(memory_format=MEMORY_FORMATS[memory_format]).eval()
    bank_state = copy.deepcopy(net.prototypes.state_dict())

    def floor() -> None:
        with torch.no_grad():
            for b in batches:
                net.explain(b["image"], online_cam=False)

    def push() -> None:
        push_module.push_prototypes(net, batches, "cpu")

    def restore() -> None:
        net.prototypes.load_state_dict(bank_state)

    counter = _BoxCounter()
    push_module.map_mass_box = counter
    try:
        restore()
        start = time.perf_counter()
        push()
        counted_push_s = time.perf_counter() - start
    finally:
        push_module.map_mass_box = counter.original
    rows = interleaved(
        {"no-grad pass": floor, "push_prototypes": push},
        repeats,
        reference="no-grad pass",
        setup={"push_prototypes": restore},
        label=f"[{preset} {model}] ",
    )
    push_row = rows[1]
    return {
        "model": model,
        "cases": sum(len(b["label"]) for b in batches),
        "batches": len(batches),
        "prototypes": net.prototypes.num_prototypes,
        "pass_s": rows[0]["median_s"],
        "push_s": push_row["median_s"],
        "ratio": push_row["ratio"],
        "boxes": counter.calls,
        "box_share": counter.seconds / counted_push_s,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu_small")
    parser.add_argument("--models", default="um_protoshare_e2,mprotonet", help="comma-separated model names")
    parser.add_argument("--cases", type=int, help="cases pushed (default: 32 cpu_small, 4 paper)")
    parser.add_argument("--batch", type=int, help="push batch size (default: 8 cpu_small, 2 paper)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up round")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--memory-format", choices=sorted(MEMORY_FORMATS), default="channels_last")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "push.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = args.cases or DEFAULT_CASES[args.preset]
    batch = args.batch or DEFAULT_BATCH[args.preset]
    batches = make_batches(args.preset, cases, batch)
    results = [
        bench_model(m.strip(), args.preset, batches, args.repeats, args.memory_format)
        for m in args.models.split(",")
        if m.strip()
    ]
    entry = {
        "what": "push_prototypes vs one no-grad explain pass over the same in-memory batches; ratio = median over "
        "rounds of the same-round time ratio",
        "preset": args.preset,
        "input": [batch, 4, *PRESETS[args.preset]["spatial_size"]],
        "memory_format": args.memory_format,
        "repeats": args.repeats,
        "goal_ratio": GOAL,
        "machine": machine(),
        "models": results,
    }
    all_results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    all_results[args.preset] = entry
    write_json(args.out, all_results)
    print_table(
        results,
        [
            ("model", "model", ""),
            ("cases", "cases", "d"),
            ("prototypes", "K", "d"),
            ("pass_s", "no-grad pass s", ".3f"),
            ("push_s", "push s", ".3f"),
            ("ratio", f"push × pass (goal ≤ {GOAL})", ".3f"),
            ("boxes", "boxes", "d"),
            ("box_share", "box share of push", ".3f"),
        ],
        title=f"### push, {args.preset}, batch {batch}, {args.threads} thread(s), {args.memory_format}, median of "
        f"{args.repeats}, load average {entry['machine']['load_average']}",
    )
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
