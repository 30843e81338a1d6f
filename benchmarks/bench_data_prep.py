"""Seconds per case of ``data_prep`` (issue 8) and the registration error of the known-transform test.

Measures, on a clinical-size synthetic DICOM study made from the SRI24 atlas
(:func:`data_prep.dicom_study_writer.write_synthetic_brain_study` at 1 mm: T1/T1-CE 240 x 240 x 160 at 1 mm,
T2 300 x 300 x 107 at 0.8 x 0.8 x 1.5 mm, an oblique FLAIR 267 x 267 x 100 at 0.9 x 0.9 x 1.6 mm, plus
localiser, DWI and ADC series), with ``--threads`` threads (2 = the project's 2-core machine):

- the whole pipeline per case (DICOM scan, identification, dcm2niix, [deepbet], four rigid registrations,
  resampling, quality check, writing), for each registration backend, with skull stripping off and, for
  SimpleITK, on (the DICOM default);
- the registration part alone (the four registrations, from the case record);
- the end-to-end transform error of every series against the known motion used to make the study;
- the known-transform test of ``tests/data_prep/test_registration.py`` (atlas moved by 8/-5/6 degrees and
  7/-9/4 mm onto an anisotropic grid, inverted contrast, noise) at 3 mm (as tested) and 1.5 mm (shipped
  atlas), for each backend: mean / max error over the brain voxels;
- simulated clinical acquisitions (:mod:`data_prep.clinical_simulation`: 0.9 mm pixels, 5-6 mm slices with a
  slice profile, tilts up to 15 degrees, bias field, tumour, non-rigid anatomy, four contrasts) registered as
  :func:`data_prep.registration.register_sequences` does (T1 -> atlas, the others -> T1), for each backend
  (``ants`` when ``antspyx`` imports) and SimpleITK with N4: error of every sequence's composed transform
  (mean / max mm over the atlas brain, degrees) and seconds per case (four registrations).

Each configuration runs ``--repeats`` times; the median is reported (the machine is shared: times are noisy).
Usage::

    python benchmarks/bench_data_prep.py --threads 2 --repeats 1
    python benchmarks/bench_data_prep.py --threads 1 --clinical-only   # the clinical-acquisition table alone

Results go to ``benchmarks/results/data_prep.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from data_prep.atlas import load_atlas
from data_prep.clinical_simulation import simulate_clinical_case
from data_prep.dicom_study_writer import write_synthetic_brain_study
from data_prep.known_motion import moved_atlas, transform_error_deg, transform_error_mm
from data_prep.native_space import load_case_record
from data_prep.pipeline import PrepOptions, prepare_dicom_study
from data_prep.registration import register_rigid, register_sequences
from monai_protoshare.io import write_json

RESULTS = Path(__file__).resolve().parent / "results" / "data_prep.json"
CLINICAL_RESULTS = RESULTS.with_name("data_prep_clinical.json")
GOAL_SECONDS = 60.0
#: Simulation seeds of the clinical table: head pitch -12.4, 13.7 and -7.2 degrees (plus roll/yaw up to 5).
CLINICAL_SEEDS = (3, 10, 2)


def _backends() -> list[str]:
    return ["simpleitk"] + (["greedy"] if importlib.util.find_spec("picsl_greedy") else [])


def clinical_configs() -> list[str]:
    """Every backend that imports here, and SimpleITK with N4 (``+N4``)."""
    return _backends() + ["simpleitk+N4"] + (["ants"] if importlib.util.find_spec("ants") else [])


def bench_clinical(threads: int, configs: list[str], seeds: tuple[int, ...] = CLINICAL_SEEDS) -> list[dict]:
    """Register simulated clinical cases with each config (``backend`` or ``backend+N4``); a row per config and case."""
    atlas = load_atlas(1.5)
    configs = [(config.removesuffix("+N4"), config.endswith("+N4")) for config in configs]
    rows = []
    for seed in seeds:
        case = simulate_clinical_case(atlas, seed=seed)
        for backend, n4 in configs:
            cpu = time.process_time()
            matrices, steps = register_sequences(
                atlas.t1, case.images, backend=backend, threads=threads, bias_correction=n4
            )
            errors = {
                s: (*transform_error_mm(atlas, m, case.truth[s]), transform_error_deg(m, case.truth[s]))
                for s, m in matrices.items()
            }
            rows.append(
                {
                    "seed": seed,
                    "pose_deg": case.description["pose_deg"],
                    "backend": backend,
                    "n4": n4,
                    "seconds": sum(step.seconds for step in steps.values()),
                    "cpu_seconds": time.process_time() - cpu,
                    "error": {s: {"mean_mm": e[0], "max_mm": e[1], "deg": e[2]} for s, e in errors.items()},
                }
            )
            print(f"seed {seed} {backend}{'+N4' if n4 else ''}: {rows[-1]['seconds']:.1f} s, {errors}", flush=True)
    return rows


def clinical_table(rows: list[dict]) -> list[dict]:
    """Per backend: error mean / max over cases and sequences (mm, degrees), mean seconds per case, time ratio."""
    table = []
    for name in dict.fromkeys(f"{r['backend']}{'+N4' if r['n4'] else ''}" for r in rows):
        mine = [r for r in rows if f"{r['backend']}{'+N4' if r['n4'] else ''}" == name]
        errors = [e for r in mine for e in r["error"].values()]
        table.append(
            {
                "backend": name,
                "cases": len(mine),
                "mean_mm": float(np.mean([e["mean_mm"] for e in errors])),
                "max_mm": float(np.max([e["max_mm"] for e in errors])),
                "mean_deg": float(np.mean([e["deg"] for e in errors])),
                "max_deg": float(np.max([e["deg"] for e in errors])),
                "seconds_per_case": float(np.mean([r["seconds"] for r in mine])),
                "cpu_seconds_per_case": float(np.mean([r["cpu_seconds"] for r in mine])),
            }
        )
    for row in table:
        row["time_ratio_to_first"] = row["seconds_per_case"] / table[0]["seconds_per_case"]
        row["cpu_ratio_to_first"] = row["cpu_seconds_per_case"] / table[0]["cpu_seconds_per_case"]
    return table


def bench_known_transform(threads: int) -> list[dict]:
    rows = []
    for spacing in (3.0, 1.5):
        atlas = load_atlas(spacing)
        moving, truth = moved_atlas(atlas)
        for backend in _backends():
            result = register_rigid(atlas.t1, moving, backend=backend, init="geometry", threads=threads)
            mean, worst = transform_error_mm(atlas, result.matrix, truth)
            rows.append(
                {
                    "atlas_spacing_mm": spacing,
                    "backend": backend,
                    "seconds": result.seconds,
                    "error_mean_mm": mean,
                    "error_max_mm": worst,
                }
            )
    return rows


def bench_pipeline(study, work: Path, threads: int, repeats: int) -> list[dict]:
    atlas = load_atlas(1.5)
    configs = [(backend, False) for backend in _backends()]
    if importlib.util.find_spec("deepbet"):
        configs.append(("simpleitk", True))
    rows = []
    for backend, skull_strip in configs:
        wall, registration, errors = [], [], {}
        for repeat in range(repeats):
            options = PrepOptions(backend=backend, skull_strip=skull_strip, threads=threads)
            start = time.perf_counter()
            case = prepare_dicom_study(study.folder, work / f"{backend}_{skull_strip}_{repeat}", "BENCH", options)
            wall.append(time.perf_counter() - start)
            record = load_case_record(case)
            registration.append(record["timings_s"]["registration"])
        for sequence, truth in study.truth.items():
            found = np.asarray(record["sequences"][sequence]["output_to_original_lps"])
            errors[sequence] = transform_error_mm(atlas, found, truth)
        rows.append(
            {
                "backend": backend,
                "skull_strip": skull_strip,
                "pipeline_s": statistics.median(wall),
                "registration_s": statistics.median(registration),
                "timings_s": record["timings_s"],
                "registration_each_s": {seq: e["registration"]["seconds"] for seq, e in record["sequences"].items()},
                "quality": record["quality"],
                "transform_error_mm": {s: {"mean": e[0], "max": e[1]} for s, e in errors.items()},
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--study-spacing", type=float, default=1.0, help="base spacing of the synthetic study (mm)")
    parser.add_argument("--clinical-only", action="store_true", help="only the simulated clinical acquisitions")
    parser.add_argument("--configs", default=None, help="clinical table: comma-separated, e.g. simpleitk,greedy,ants")
    parser.add_argument("--seeds", default=",".join(map(str, CLINICAL_SEEDS)), help="clinical simulation seeds")
    args = parser.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    configs = args.configs.split(",") if args.configs else clinical_configs()
    main_clinical(args.threads, configs, tuple(int(seed) for seed in args.seeds.split(",")))
    if args.clinical_only:
        return
    with tempfile.TemporaryDirectory(prefix="bench_data_prep_") as tmp:
        start = time.perf_counter()
        study = write_synthetic_brain_study(Path(tmp) / "study", spacing=args.study_spacing)
        write_s = time.perf_counter() - start
        sizes = {name: list(image.GetSize()) for name, image in study.images.items()}
        known = bench_known_transform(args.threads)
        pipeline = bench_pipeline(study, Path(tmp), args.threads, args.repeats)
    print(f"\nstudy: {sizes} (written in {write_s:.1f} s); threads {args.threads}; load {os.getloadavg()[0]:.1f}")
    print("\nknown-transform registration (atlas moved 8/-5/6 deg, 7/-9/4 mm)")
    print(f"{'atlas mm':>8} {'backend':>10} {'s':>6} {'mean mm':>8} {'max mm':>7}")
    for row in known:
        print(
            f"{row['atlas_spacing_mm']:>8} {row['backend']:>10} {row['seconds']:>6.1f} {row['error_mean_mm']:>8.3f} "
            f"{row['error_max_mm']:>7.3f}"
        )
    print(f"\nwhole pipeline per case (goal <= {GOAL_SECONDS:.0f} s with SimpleITK)")
    print(f"{'backend':>10} {'bet':>5} {'pipeline s':>10} {'registr. s':>10} {'worst series error mm':>22}")
    for row in pipeline:
        worst = max(e["max"] for e in row["transform_error_mm"].values())
        print(
            f"{row['backend']:>10} {row['skull_strip']!s:>5} {row['pipeline_s']:>10.1f} {row['registration_s']:>10.1f} "
            f"{worst:>22.2f}"
        )
    write_json(
        RESULTS,
        {
            "machine": {
                "platform": platform.platform(),
                "cpu_count": os.cpu_count(),
                "threads": args.threads,
                "loadavg_at_end": os.getloadavg()[0],
            },
            "study_sizes": sizes,
            "known_transform": known,
            "pipeline": pipeline,
            "goal_seconds": GOAL_SECONDS,
            "note": "median of --repeats runs on a shared machine; wall times are noisy",
        },
    )
    print(f"\nwrote {RESULTS}")


def main_clinical(threads: int, configs: list[str], seeds: tuple[int, ...]) -> None:
    """Run, print and save the clinical-acquisition table (time ratios are to the first config)."""
    rows = bench_clinical(threads, configs, seeds)
    table = clinical_table(rows)
    print(f"\nsimulated clinical acquisitions (seeds {seeds}, atlas 1.5 mm, {threads} thread(s))")
    print(
        f"{'backend':>13} {'mean mm':>8} {'max mm':>7} {'mean deg':>8} {'max deg':>8} {'s/case':>7} {'ratio':>6} "
        f"{'CPU s':>6} {'ratio':>6}"
    )
    for row in table:
        print(
            f"{row['backend']:>13} {row['mean_mm']:>8.2f} {row['max_mm']:>7.2f} {row['mean_deg']:>8.2f} "
            f"{row['max_deg']:>8.2f} {row['seconds_per_case']:>7.1f} {row['time_ratio_to_first']:>6.2f} "
            f"{row['cpu_seconds_per_case']:>6.1f} {row['cpu_ratio_to_first']:>6.2f}"
        )
    machine = {"platform": platform.platform(), "threads": threads, "loadavg_at_end": os.getloadavg()[0]}
    out = CLINICAL_RESULTS.with_stem(f"{CLINICAL_RESULTS.stem}_{'_'.join(configs).replace('+', '')}")
    write_json(out, {"machine": machine, "table": table, "cases": rows, "note": "shared CPU: times indicative"})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
