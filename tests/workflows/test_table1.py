import csv
import io
import json

import pytest

from monai_protoshare.workflows.table1 import collect, render_csv, render_markdown, write_table


def _write(root, run, fold, bac, ap, ids, ece=None):
    folder = root / run / f"fold{fold}"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"bac": bac, "ap": ap, "ids": ids, "ece": ece, "n": 10}))


def test_mean_and_population_std_over_folds_in_percent_and_paper_order(tmp_path):
    _write(tmp_path, "um_protoshare", 0, 0.8, 0.9, 4.0, ece=0.05)
    _write(tmp_path, "um_protoshare", 1, 0.9, 0.7, 6.0, ece=0.15)
    _write(tmp_path, "cnn", 0, 0.85, 0.1, 14.0)
    rows = list(csv.reader(io.StringIO(render_csv(collect(tmp_path)))))
    assert rows[0][:7] == ["Model", "Ablation", "Design configuration", "BAC (%, ↑)", "IDS (%, ↓)", "AP (%, ↑)",
                           "ECE (%, ↓)"]  # fmt: skip
    assert [r[0] for r in rows[1:]] == ["CNN: Grad-CAM", "UM-ProtoShare"]  # the paper's order
    um = rows[2]
    assert um[1] == "E2" and um[3] == "85.00 ± 5.00" and um[4] == "5.00 ± 1.00" and um[5] == "80.00 ± 10.00"
    assert um[6] == "10.00 ± 5.00" and rows[1][6] == ""  # ECE in %; none recorded for the CNN row here
    assert um[7] == "2" and um[8] == "88.40 ± 2.80"  # folds, then the paper's values
    assert um[11] == ""  # no timing.json: no hours
    assert "| UM-ProtoShare | E2 | mid-heavy |" in render_markdown(collect(tmp_path))
    assert rows[0][-1] == "AP map" and um[-1] == "unrecorded"


def test_ap_column_names_each_rows_class_map_convention(tmp_path):
    for run, fold, extra in (
        ("um_protoshare", 0, {"class_map": "density"}),
        ("um_protoshare", 1, {"class_map": "eq28"}),
        ("protopnet", 0, {"class_map": "density", "protopnet_map": "topk"}),
        ("cnn", 0, {"attribution": "gradcam"}),
    ):
        folder = tmp_path / run / f"fold{fold}"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"bac": 0.8, "ap": 0.5, "ids": 5.0, **extra}))
    rows = {r[0]: r[-1] for r in csv.reader(io.StringIO(render_csv(collect(tmp_path))))}
    assert rows == {"Model": "AP map", "CNN: Grad-CAM": "gradcam", "ProtoPNet": "density (topk)",
                    "UM-ProtoShare": "density, eq28"}  # fmt: skip


def test_write_table_files_and_empty_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        write_table(tmp_path)
    _write(tmp_path, "mprotonet", 0, 0.8, 0.8, 7.0)
    md, table = write_table(tmp_path)
    assert md.name == "table1.md" and table.name == "table1.csv" and "MProtoNet" in md.read_text()


def test_hours_column_sums_the_folds_timing(tmp_path):
    for fold, (train_s, evaluate_s) in enumerate(((3000.0, 600.0), (2400.0, 1200.0))):
        _write(tmp_path, "mprotonet", fold, 0.8, 0.5, 5.0)
        (tmp_path / "mprotonet" / f"fold{fold}" / "timing.json").write_text(
            json.dumps({"train_s": train_s, "evaluate_s": evaluate_s, "threads": 2})
        )
    row = list(csv.reader(io.StringIO(render_csv(collect(tmp_path)))))[1]
    assert row[0] == "MProtoNet" and row[11] == "2.00"  # 7 200 s
