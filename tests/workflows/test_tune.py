"""Fair tuning: the inner split stays inside fold k's training cases; the rule; a tiny grid end to end."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from monai_protoshare.workflows.options import BundleOptionError, fold_split
from monai_protoshare.workflows.tune import choose, inner_split, parse_grid, run_tuning, split_by_ids
from tests.bundles.conftest import BUNDLES_DIR, tiny_overrides


def _datalist(n_lgg: int, n_hgg: int) -> list[dict]:
    labels = [0] * n_lgg + [1] * n_hgg
    return [{"subject_id": f"BraTS20_Training_{i:03d}", "label": y} for i, y in enumerate(labels, 1)]


def test_inner_split_is_stratified_seeded_and_never_holds_held_out_cases():
    datalist = _datalist(40, 60)
    for fold in range(5):
        training, held_out = fold_split(datalist, fold, 5, 0)
        train_ids, val_ids = inner_split(training, inner_folds=4, inner_fold=0, seed=0)
        held = {i["subject_id"] for i in held_out}
        assert not held & (set(train_ids) | set(val_ids))
        assert set(train_ids) | set(val_ids) == {i["subject_id"] for i in training} and not set(train_ids) & set(
            val_ids
        )
        grade = {i["subject_id"]: i["label"] for i in datalist}
        assert sorted(grade[c] for c in val_ids) == [0] * 8 + [1] * 12  # a quarter of 32 LGG and 48 HGG
        assert inner_split(training, 4, 0, 0) == (train_ids, val_ids)  # seeded
    assert inner_split(training, 4, 0, 1)[1] != val_ids
    with pytest.raises(BundleOptionError, match="--inner_fold"):
        inner_split(training, 4, 4, 0)
    with pytest.raises(BundleOptionError, match="--inner_folds"):
        inner_split(_datalist(2, 6), 4, 0, 0)


def test_split_by_ids_keeps_datalist_order_and_names_bad_ids():
    datalist = _datalist(3, 3)
    ids = [i["subject_id"] for i in datalist]
    train, val = split_by_ids(datalist, {"training": [ids[4], ids[0]], "validation": [ids[5], ids[2]]})
    assert [i["subject_id"] for i in train] == [ids[0], ids[4]] and [i["subject_id"] for i in val] == [ids[2], ids[5]]
    with pytest.raises(BundleOptionError, match="not in the dataset: \\['nope'\\]"):
        split_by_ids(datalist, {"training": ["nope"], "validation": []})
    with pytest.raises(BundleOptionError, match="in both"):
        split_by_ids(datalist, {"training": [ids[0]], "validation": [ids[0]]})
    with pytest.raises(BundleOptionError, match="'validation'"):
        split_by_ids(datalist, {"training": [ids[0]]})


def test_rule_takes_the_best_ap_among_points_within_the_bac_tolerance():
    def point(name, bac, ap, ids=1.0):
        return {"name": name, "metrics": {"bac": bac, "ap": ap, "ids": ids}}

    points = [point("a", 0.90, 0.40), point("b", 0.86, 0.70), point("c", 0.80, 0.95), point("d", 0.86, 0.70, 0.5)]
    assert choose(points)["name"] == "d"  # c is 0.10 below the best BAC; b and d tie on AP, d has the lower IDS
    assert choose(points, bac_tolerance=0.0)["name"] == "a"
    assert choose(points, bac_tolerance=0.2)["name"] == "c"
    assert choose([point("x", 0.5, 0.3), point("y", 0.5, 0.3)])["name"] == "x"  # full tie: grid order


def test_parse_grid():
    assert parse_grid(["mask_prior=0.1,0.5", "lambda_map=5", "network_def#mask_prior=0.2"]) == {
        "mask_prior": [0.1, 0.5],
        "lambda_map": [5],
        "network_def#mask_prior": [0.2],
    }
    for bad in (["mask_prior"], ["mask_prior="], ["a=1", "a=2"]):
        with pytest.raises(BundleOptionError, match="--grid"):
            parse_grid(bad)


def test_tiny_grid_end_to_end_records_every_point_on_the_inner_split_and_resumes(bundle_cohort, tmp_path):
    bundles = tmp_path / "bundles"
    shutil.copytree(BUNDLES_DIR / "um_protoshare", bundles / "um_protoshare")
    (bundles / "um_protoshare" / "configs" / "presets" / "tiny.yaml").write_text(
        "\n".join(f"{k}: {json.dumps(v)}" for k, v in tiny_overrides("um_protoshare").items()) + "\n"
    )
    out = tmp_path / "tune"
    kwargs = dict(fold=0, preset="tiny", output_dir=str(out), inner_folds=2, bundles_dir=bundles)
    with pytest.raises(BundleOptionError, match="not config ids"):
        run_tuning(str(bundle_cohort), "um_protoshare", {"no_such_knob": [1]}, **kwargs)
    record = run_tuning(str(bundle_cohort), "um_protoshare", {"mask_prior": [0.1, 0.5]}, **kwargs)

    split = record["split"]
    held_out = set(split["outer"]["held_out_ids"])
    inner_train, inner_val = split["inner"]["training"], split["inner"]["validation"]
    assert len(held_out) == 2 and len(inner_train) == 4 and len(inner_val) == 4  # 10 cases, 5 folds, 2 inner folds
    assert not held_out & (set(inner_train) | set(inner_val))
    assert [p["values"] for p in record["points"]] == [{"mask_prior": 0.1}, {"mask_prior": 0.5}]
    for point in record["points"]:
        fold_dir = out / point["name"] / "fold0"
        with open(fold_dir / "predictions.csv") as f:
            evaluated = {row["subject_id"] for row in csv.DictReader(f)}
        assert evaluated == set(inner_val) and point["metrics"]["n"] == 4  # evaluated on the inner validation only
    assert record["chosen"]["name"] == choose(record["points"])["name"]
    assert json.loads((out / "tuning.json").read_text())["chosen"] == record["chosen"]
    assert "| 0.1 |" in (out / "tuning.md").read_text().replace("**", "")

    model = out / record["points"][0]["name"] / "fold0" / "checkpoints" / "model.pt"
    stamp = model.stat().st_mtime_ns
    again = run_tuning(str(bundle_cohort), "um_protoshare", {"mask_prior": [0.1, 0.5]}, **kwargs)
    assert model.stat().st_mtime_ns == stamp and again["points"] == record["points"]  # finished points skipped
    with pytest.raises(BundleOptionError, match="another split"):
        run_tuning(str(bundle_cohort), "um_protoshare", {"mask_prior": [0.1]}, **{**kwargs, "inner_seed": 1})
