import csv
import json

import pytest
from gpu_fold import PAPER_SCHEDULE, extrapolate, main


def test_extrapolation_adds_up_app_d5_from_the_steady_epochs():
    phases = {
        "setup_s": 30.0,
        "evaluation_s": 20.0,
        "epochs": {"warmup": [9.0, 4.0, 4.2], "latent": [8.0, 6.0], "classifier": [3.0]},
        "pushes": [5.0, 2.0, 2.0],
    }
    est = extrapolate(phases)
    assert est["per_epoch_s"] == {"warmup": 4.1, "latent": 6.0, "classifier": 3.0}  # the first epoch left out
    assert PAPER_SCHEDULE.num_blocks == 10
    fold = 30 + 50 * 4.1 + 100 * 6.0 + 10 * (2.0 + 10 * 3.0) + 20
    assert est["fold_s"] == pytest.approx(fold) and est["folds_h"] == pytest.approx(5 * fold / 3600)
    assert f"= {fold:.0f} s" in est["formula"]


def test_dry_run_trains_pushes_and_evaluates_one_tiny_fold(tmp_path, capsys):
    out = tmp_path / "gpu_fold.json"
    argv = ["--dry-run", "--cohort-dir", str(tmp_path / "cohort"), "--output-dir", str(tmp_path / "outputs")]
    assert main(argv + ["--out", str(out)]) == 0
    result = json.loads(out.read_text())
    phases = result["phases"]
    # W, L, P, C = 1, 2, 1, 1: one warm-up epoch, two stage-1 epochs, a push and a stage-3 epoch after each
    assert [len(phases["epochs"][s]) for s in ("warmup", "latent", "classifier")] == [1, 2, 2]
    assert len(phases["pushes"]) == 2 and phases["evaluation_s"] > 0
    assert set(phases["metrics"]) >= {"bac", "ap", "ids"}
    with open(tmp_path / "cohort" / "merged" / "name_mapping.csv", newline="") as f:
        ids = [row["BraTS_2020_subject_ID"] for row in csv.DictReader(f)]
    assert ids == [f"BraTS20_Training_{i:03d}" for i in range(1, 11)]
    assert "5 folds =" in capsys.readouterr().out
    assert result["extrapolation"]["fold_s"] > result["phases"]["setup_s"]
