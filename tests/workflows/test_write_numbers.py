"""docs/write_numbers.py: records of fake run outputs, and the marked README blocks rewritten from them."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_SPEC = importlib.util.spec_from_file_location("write_numbers", REPO / "docs" / "write_numbers.py")
write_numbers = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(write_numbers)

MACHINE = {"cpu": "Test CPU", "logical_cpus": 2, "threads": 1, "cpu_capability": "AVX2", "torch": "2.13.0+cpu"}
BAC, AP, IDS = (0.8, 0.9, 1.0), (0.5, 0.7, 0.6), (1.0, 2.0, 4.0)


def _fake_run(root: Path, seed: int, bac: float, ap: float, ids: float, machine: dict | None) -> Path:
    """A demo output folder as ``run_demo`` writes it (summary, metrics, run info, two evidence cases)."""
    run, fold = root / f"seed{seed}", root / f"seed{seed}" / "fold0"
    evidence = []
    for case, grade in ((f"case{seed}_h", "HGG"), (f"case{seed}_l", "LGG")):
        folder = fold / "evidence" / case
        folder.mkdir(parents=True)
        (folder / "report.json").write_text(json.dumps({"subject_id": case, "label": grade, "prediction": grade}))
        (folder / "case_figure.png").write_bytes(f"png {case}".encode())
        evidence.append(str(folder))
    metrics = {"bac": bac, "ap": ap, "ids": ids, "ids_peer": ids + 1, "n": 20, "class_map": "density",
               "ap_by_class_map": {"density": ap, "eq28": ap / 2, "eq12": ap + 0.01}}  # fmt: skip
    (fold / "metrics.json").write_text(json.dumps(metrics))
    argv = ["/x/demo.py", "--seed", str(seed), "--output_dir", str(run)]
    (fold / "run_info.json").write_text(
        json.dumps({"command": argv, "git_sha": "a" * 40, "time_utc": "2026-12-07T22:00:00+00:00"})
    )
    (fold / "run_config.yaml").write_text("seed: 0\n")
    summary = {"bundle": "um_protoshare", "preset": "cpu_small", "fold": 0, "dataset_dir": str(root / "cohort"),
               "cohort": {"version": 3, "n_cases": 100, "seed": seed}, "metrics": metrics,
               "timings": {"total_s": 600.0 * (seed + 1)}, "outputs": {"evidence": evidence}}  # fmt: skip
    if machine:
        summary["machine"] = machine
    (run / "demo_summary.json").write_text(json.dumps(summary))
    return run


def _repo(root: Path) -> Path:
    repo = root / "repo"
    (repo / "docs" / "images").mkdir(parents=True)
    (repo / "bundles" / "um" / "docs").mkdir(parents=True)
    blocks = "<!-- numbers:demo -->\nhand-copied 0.99\n<!-- /numbers:demo -->\n\n<!-- numbers:demo_figures -->\n<!-- /numbers:demo_figures -->\n"
    (repo / "README.md").write_text("# title\n\n" + blocks + "tail\n")
    (repo / "bundles" / "um" / "docs" / "README.md").write_text("## Performance\n" + blocks)
    return repo


def test_demo_blocks_show_each_seed_and_mean_and_sample_sd_and_are_idempotent(tmp_path):
    runs = [_fake_run(tmp_path, s, BAC[s], AP[s], IDS[s], MACHINE) for s in range(3)]
    repo = _repo(tmp_path)
    write_numbers.main(["--repo", str(repo), "demo", *map(str, runs), "--figure_seed", "1", "--command", "demo S"])

    record = json.loads((repo / "docs" / "results" / "demo.json").read_text())
    assert record["statistics"]["bac"]["mean"] == pytest.approx(0.9)
    assert record["statistics"]["bac"]["sd"] == pytest.approx(statistics.stdev(BAC)) == pytest.approx(0.1)
    assert record["statistics"]["ids"]["sd"] == pytest.approx(statistics.stdev(IDS))  # 1.53, not pstdev's 1.25
    assert record["machine"] == MACHINE and record["commits"] == ["a" * 40] and record["command"] == "demo S"
    assert [r["seed"] for r in record["runs"]] == [0, 1, 2]

    readme = (repo / "README.md").read_text()
    assert "hand-copied" not in readme and readme.startswith("# title\n") and readme.endswith("tail\n")
    rows = {line.split(" | ")[0]: line for line in readme.splitlines() if line.startswith("| ")}
    assert rows["| cohort seed"].startswith("| cohort seed | BAC | AP (`density`) | AP `eq28` |")
    assert rows["| 0"].startswith("| 0 | 0.800 | 0.500 | 0.250 | 0.510 | 1.00 | 2.00 | 10.0 |")
    ap_sd = statistics.stdev(AP)
    assert f"| 0.900 ± 0.100 | 0.600 ± {ap_sd:.3f} |" in rows["| **mean ± sd**"]
    assert f"{statistics.fmean(IDS):.2f} ± {statistics.stdev(IDS):.2f}" in rows["| **mean ± sd**"]
    assert "Produced by `demo S`" in readme and "Test CPU (2 logical CPUs, AVX2), 1 thread" in readme
    assert "(case1_h, predicted HGG)" in readme and "](docs/images/demo_case_figure_LGG.png)" in readme
    card = (repo / "bundles" / "um" / "docs" / "README.md").read_text()
    assert "](../../../docs/images/demo_case_figure_HGG.png)" in card and "| 0.900 ± 0.100 |" in card
    assert (repo / "docs" / "images" / "demo_case_figure_LGG.png").read_bytes() == b"png case1_l"  # seed 1's

    before = readme
    write_numbers.main(["--repo", str(repo), "render"])
    assert (repo / "README.md").read_text() == before  # rendering again changes nothing


def test_runs_without_a_recorded_machine_need_the_thread_count(tmp_path):
    runs = [_fake_run(tmp_path, s, BAC[s], AP[s], IDS[s], None) for s in range(2)]
    repo = _repo(tmp_path)
    with pytest.raises(SystemExit, match="--threads"):
        write_numbers.main(["--repo", str(repo), "demo", *map(str, runs)])
    write_numbers.main(["--repo", str(repo), "demo", *map(str, runs), "--threads", "1", "--note", "Two at once."])
    record = json.loads((repo / "docs" / "results" / "demo.json").read_text())
    assert record["machine"]["threads"] == 1 and record["figures"]["seed"] == 0
    assert "1 thread" in (repo / "README.md").read_text() and "Two at once." in (repo / "README.md").read_text()


def test_table_block_and_marker_errors(tmp_path):
    root = tmp_path / "cv"
    root.mkdir()
    (root / "table1.csv").write_text("Model,BAC (%),folds\nUM-ProtoShare,85.00 ± 5.00,5\n")
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "README.md").write_text("<!-- numbers:table1 -->\n<!-- /numbers:table1 -->\n")
    write_numbers.main(
        ["--repo", str(repo), "table1", str(root), "--command", "crossval X", "--wall_s", "7200", "--threads", "2"]
    )
    text = (repo / "README.md").read_text()
    assert "| Model | BAC (%) | folds |\n|---|---|---|\n| UM-ProtoShare | 85.00 ± 5.00 | 5 |" in text
    assert "Produced by `crossval X` in 2.0 h" in text and "2 threads" in text

    # the cross-validation runner's record gives the wall time and threads when the command line does not
    (root / "crossval_wall.json").write_text(json.dumps({"wall_s": 5400.0, "jobs": 8, "threads": 2}))
    write_numbers.main(["--repo", str(repo), "table1", str(root), "--command", "crossval X"])
    assert "in 1.5 h" in (repo / "README.md").read_text()

    (repo / "README.md").write_text("<!-- numbers:nonsense -->\n<!-- /numbers:nonsense -->\n")
    with pytest.raises(SystemExit, match="unknown block"):
        write_numbers.main(["--repo", str(repo), "render"])
    (repo / "README.md").write_text("<!-- numbers:table1 -->\nno end\n")
    with pytest.raises(SystemExit, match="without its"):
        write_numbers.main(["--repo", str(repo), "render"])


def test_seg_block_carries_the_tables_later_sections(tmp_path):
    root = tmp_path / "seg"
    root.mkdir()
    (root / "seg_table.csv").write_text("model,folds,Dice WT (%)\nproto_seg,3,69.71 ± 1.85\n")
    (root / "seg_table.md").write_text(
        "## Segmentation\n\n| model |\n\n## Pruning curve of proto_seg\n\n| fraction | Dice WT |\n|---|---|\n| 0.75 | 69.58 |\n"
    )
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "README.md").write_text("<!-- numbers:seg -->\n<!-- /numbers:seg -->\n")
    write_numbers.main(["--repo", str(repo), "seg", str(root), "--command", "seg_table X", "--threads", "1"])
    text = (repo / "README.md").read_text()
    assert "| proto_seg | 3 | 69.71 ± 1.85 |" in text and "**Pruning curve of proto_seg**" in text
    assert "| 0.75 | 69.58 |" in text and text.count("Segmentation") == 0  # the first section is the csv's table
