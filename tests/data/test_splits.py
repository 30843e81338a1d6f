"""Folds: sklearn's (and hence MProtoNet's) stratified folds over csv row order, written as MONAI datalists."""

from __future__ import annotations

import json

import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedKFold

from monai_protoshare.data import splits
from monai_protoshare.data.brats import load_brats_datalist
from monai_protoshare.data.splits import fold_datalists, load_fold_datalist, make_folds, write_fold_datalists

# The release's class balance in a fixed, irregular order (293 HGG, 76 LGG).
BRATS_LABELS = np.random.default_rng(2020).permutation([1] * 293 + [0] * 76)


def test_folds_equal_sklearn_repeated_and_shuffled_stratified_kfold():
    folds = make_folds(BRATS_LABELS)
    x = np.zeros((BRATS_LABELS.size, 1))
    repeated = RepeatedStratifiedKFold(n_splits=5, n_repeats=1, random_state=0).split(x, BRATS_LABELS)
    shuffled = StratifiedKFold(n_splits=5, shuffle=True, random_state=0).split(x, BRATS_LABELS)
    for (train, test), (r_train, r_test), (s_train, s_test) in zip(folds, repeated, shuffled, strict=True):
        np.testing.assert_array_equal(test, r_test)
        np.testing.assert_array_equal(train, r_train)
        np.testing.assert_array_equal(test, s_test)
        np.testing.assert_array_equal(train, s_train)
    tests = np.concatenate([test for _, test in folds])
    assert sorted(tests.tolist()) == list(range(369))  # every subject held out exactly once
    assert all(15 <= (BRATS_LABELS[test] == 0).sum() <= 16 for _, test in folds)  # 76 LGG over 5 folds


def test_fold_datalists_partition_the_items_and_reject_bad_folds():
    datalist = [{"subject_id": f"s{i}", "label": int(y)} for i, y in enumerate(BRATS_LABELS[:40])]
    held_out = []
    for fold in range(5):
        train, test = fold_datalists(datalist, fold)
        assert {d["subject_id"] for d in train}.isdisjoint(d["subject_id"] for d in test)
        assert len(train) + len(test) == 40
        held_out += [d["subject_id"] for d in test]
    assert sorted(held_out) == sorted(d["subject_id"] for d in datalist)
    for fold in (-1, 5, "1", 1.0):
        with pytest.raises(ValueError, match=r"fold must be an integer in 0\.\.4"):
            fold_datalists(datalist, fold)
    with pytest.raises(ValueError, match="at least n_splits=5"):
        make_folds([0, 1, 1, 1, 1, 1, 0])
    with pytest.raises(KeyError, match="label"):
        fold_datalists([{"subject_id": "x"}] * 10, 0)


def test_fold_files_load_back_with_monai_relative_to_the_dataset(tiny_cohort, tmp_path):
    datalist = load_brats_datalist(tiny_cohort)
    paths = write_fold_datalists(datalist, tmp_path / "folds", n_splits=3, base_dir=tiny_cohort.resolve())
    assert [p.name for p in paths] == ["fold0.json", "fold1.json", "fold2.json"]
    for k, path in enumerate(paths):
        content = json.loads(path.read_text())
        assert (content["fold"], content["n_splits"], content["seed"]) == (k, 3, 0)
        assert not content["training"][0]["seg"].startswith("/")  # stored relative
        train, test = fold_datalists(datalist, k, n_splits=3)
        loaded = load_decathlon_datalist(path, data_list_key="training", base_dir=tiny_cohort.resolve())
        assert [d["image"] for d in loaded] == [d["image"] for d in train]
        assert [(d["seg"], d["label"]) for d in loaded] == [(d["seg"], d["label"]) for d in train]
        assert load_fold_datalist(path, "validation", base_dir=tiny_cohort.resolve()) == test
    assert not list((tmp_path / "folds").glob(".*"))  # atomic: no temporary files left


def test_cli_writes_one_datalist_per_fold(tiny_cohort, tmp_path, capsys):
    paths = splits.main(["--dataset_dir", str(tiny_cohort), "--out", str(tmp_path), "--n_splits", "3"])
    assert len(paths) == 3 and str(paths[0]) in capsys.readouterr().out
    assert load_fold_datalist(paths[0], "validation")[0]["image"][0].endswith("_t1.nii.gz")
