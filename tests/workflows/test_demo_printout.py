"""The demo's printout: --seeds runs one demo per cohort seed and prints mean ± sample sd; a single run prints the
recorded reference beside its metrics."""

from __future__ import annotations

import json
import statistics

import pytest

from monai_protoshare.workflows import demo

MACHINE = {"cpu": "Test CPU", "logical_cpus": 2, "threads": 1, "cpu_capability": "AVX2", "torch": "2.13.0+cpu"}
BAC = {3: 0.75, 5: 1.0, 8: 0.5}


def _summary(seed: int, output_dir: str) -> dict:
    return {
        "bundle": "um_protoshare",
        "preset": "cpu_small",
        "fold": 0,
        "dataset_dir": f"{output_dir}/demo_cohort",
        "cohort": {"version": demo.DEMO_VERSION, "n_cases": demo.DEMO_CASES, "seed": seed},
        "metrics": {"bac": BAC[seed], "ap": 0.1 * seed, "ids": None, "n": 20},
        "timings": {"total_s": 60.0, "train_s": 50.0, "evaluate_s": 5.0},
        "machine": MACHINE,
        "outputs": {"fold_dir": f"{output_dir}/fold0"},
    }


def test_seeds_run_into_their_folders_and_print_mean_and_sample_sd(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_run_demo(output_dir, seed, cohort_dir, **kwargs):
        calls.append((output_dir, seed, str(cohort_dir)))
        return _summary(seed, output_dir)

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    result = demo.main(["--seeds", "3", "5", "8", "--output_dir", str(tmp_path)])
    assert calls == [(str(tmp_path / f"seed{s}"), s, str(tmp_path / f"seed{s}" / "demo_cohort")) for s in (3, 5, 8)]
    bac = result["statistics"]["bac"]
    assert bac["mean"] == pytest.approx(0.75) and bac["sd"] == pytest.approx(statistics.stdev(BAC.values()))
    assert result["statistics"]["ids"] == {"values": [], "mean": None, "sd": None, "n": 0}
    assert json.loads((tmp_path / "demo_seeds.json").read_text())["seeds"] == [3, 5, 8]
    out = capsys.readouterr().out
    assert "0.750 ± 0.250" in out and "0.533 ± 0.252" in out  # AP 0.3, 0.5, 0.8
    assert [line.split()[0] for line in out.splitlines() if line.startswith("  ")][1:4] == ["3", "5", "8"]
    with pytest.raises(SystemExit):  # a seed twice
        demo.main(["--seeds", "3", "3", "--output_dir", str(tmp_path)])


def test_single_run_prints_the_reference_of_its_setting_only(tmp_path, capsys):
    runs = [_summary(s, "x") for s in (3, 5, 8)]
    reference = {
        "setting": {"bundle": "um_protoshare", "preset": "cpu_small", "fold": 0,
                    "cohort_version": demo.DEMO_VERSION, "n_cases": demo.DEMO_CASES},
        "runs": [{"seed": s} for s in (3, 5, 8)],
        "statistics": demo.seed_statistics(runs),
        "machine": MACHINE,
    }  # fmt: skip
    path = tmp_path / "demo.json"
    path.write_text(json.dumps(reference))
    summary = _summary(3, "out")
    assert demo.load_reference(summary, path) == reference
    demo._print_table(summary, demo.load_reference(summary, path))
    out = capsys.readouterr().out
    bac_line = next(line for line in out.splitlines() if line.strip().startswith("BAC"))
    assert bac_line.split() == ["BAC", "0.750", "0.750", "±", "0.250"]
    assert "reference: cohort seeds 3, 5, 8 on Test CPU (2 logical CPUs, AVX2), 1 thread" in out
    for other in ({"preset": "paper"}, {"fold": 1}, {"cohort": {**summary["cohort"], "n_cases": 10}}, {"cohort": None}):
        assert demo.load_reference({**summary, **other}, path) is None
    assert demo.load_reference(summary, tmp_path / "absent.json") is None
