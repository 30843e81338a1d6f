"""Bad options and bad data given to the bundle workflows (train, evaluate, inference), in process and on the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from monai_protoshare.data.synthetic import generate_cohort
from monai_protoshare.networks import build_network
from monai_protoshare.workflows.demo import DEFAULT_BUNDLES_DIR, bundle_workflow
from monai_protoshare.workflows.options import BundleOptionError

from .conftest import TINY, case_file, expect_failure, record, subject, truncate, with_voxel

BUNDLE = DEFAULT_BUNDLES_DIR / "um_protoshare"
COMPONENT = "bundle train/evaluate"
_NET = ("spatial_size", "pixdim", "encoder_layers", "encoder_widths", "embedding_dim")


@pytest.fixture(scope="module")
def cohort10(tmp_path_factory) -> Path:
    """Ten valid cases at 12 mm, half of each grade (five folds of two); read-only."""
    return generate_cohort(
        tmp_path_factory.mktemp("cohort10"), n_cases=10, seed=3, spacing=12.0, lgg_fraction=0.5, progress=False
    )


@pytest.fixture
def broken10(cohort10, tmp_path) -> Path:
    """A copy of :func:`cohort10` with case 4's T1-CE truncated and case 7's FLAIR holding a NaN."""
    import shutil

    root = Path(shutil.copytree(cohort10, tmp_path / "broken", ignore=shutil.ignore_patterns(".monai_protoshare*")))
    truncate(case_file(root, 4, "t1ce"))
    with_voxel(case_file(root, 7, "flair"), float("nan"))
    return root


def _run(configs, workflow_type="train", **overrides):
    workflow = bundle_workflow(BUNDLE, configs, workflow_type, **overrides)
    workflow.run()
    return workflow


def _train(cohort, tmp_path, **overrides):
    return _run(["train.yaml"], **{**TINY, "dataset_dir": str(cohort), "output_dir": str(tmp_path), **overrides})


# option -> (value, exception, pattern)
OPTION_CASES = {
    "--fold 'abc'": ({"fold": "abc"}, BundleOptionError, r"--fold: must be an integer in 0\.\.4; got 'abc'"),
    "--fold -1": ({"fold": -1}, BundleOptionError, r"--fold: must be an integer in 0\.\.4; got -1"),
    "--batch_size -3": ({"batch_size": -3}, RuntimeError, r"batch_size should be a positive integer value, but got batch_size=-3"),
    "--batch_size 'abc'": ({"batch_size": "abc"}, RuntimeError, r"batch_size should be a positive integer value, but got batch_size=abc"),
    "--warmup_epochs 'two'": ({"warmup_epochs": "two"}, RuntimeError, r"warmup_epochs must be an integer >= 0; got 'two'"),
    "--push_interval 0": ({"push_interval": 0}, RuntimeError, r"push_interval must be an integer >= 1; got 0"),
    "--pixdim -3": ({"pixdim": -3.0}, RuntimeError, r"spatial_size must be positive and pixdim > 0 mm, got .* and \(-3\.0, -3\.0, -3\.0\)"),
    "--model_name 'um_protshare' (typo)": ({"model_name": "um_protshare"}, RuntimeError, r"um_protshare.*did you mean 'um_protoshare'"),
    "--classifier_inputs 'cache' (typo)": ({"classifier_inputs": "cache"}, RuntimeError, r"cache.*did you mean 'cached'"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_a_bad_option_names_the_option_and_what_was_expected(cohort10, tmp_path, case):
    overrides, exception, pattern = OPTION_CASES[case]
    expect_failure(case, COMPONENT, exception, pattern, _train, cohort10, tmp_path, **overrides)
    assert not (tmp_path / "fold0" / "checkpoints").exists()  # nothing trained


def test_dataset_dir_that_is_a_file_is_named(cohort10, tmp_path):
    expect_failure(
        "--dataset_dir is a file",
        COMPONENT,
        BundleOptionError,
        r"--dataset_dir: '.*name_mapping\.csv' is not a folder",
        _train,
        cohort10 / "name_mapping.csv",
        tmp_path,
    )


def test_training_refuses_a_dataset_with_bad_cases_naming_each(broken10, tmp_path):
    error = expect_failure(
        "train on a dataset with a truncated and a NaN case",
        COMPONENT,
        BundleOptionError,
        rf"--dataset_dir: BraTS dataset at .*2 problem\(s\) in 2 subject\(s\).*{subject(4)} \| {subject(4)}_t1ce\.nii\.gz"
        rf" \| unreadable voxel data \(truncated.*{subject(7)} \| {subject(7)}_flair\.nii\.gz \| 1 NaN/Inf voxel",
        _train,
        broken10,
        tmp_path,
    )
    assert error.code == 2


def test_evaluation_with_a_bad_case_is_an_error_naming_it_never_a_metric_over_fewer_cases(broken10, tmp_path):
    """Decision: evaluation stops on a bad held-out case (naming it) rather than skipping it, because BAC, AP and IDS
    over a silently reduced held-out set would not be comparable between models or folds."""
    ckpt = tmp_path / "model.pt"
    torch.save(build_network("um_protoshare", **{k: TINY[k] for k in _NET[2:]}).state_dict(), ckpt)
    values = {**TINY, "dataset_dir": str(broken10), "output_dir": str(tmp_path), "ckpt_path": str(ckpt)}
    expect_failure(
        "evaluate on a dataset with bad cases",
        "bundle evaluate",
        BundleOptionError,
        rf"{subject(4)}_t1ce\.nii\.gz .*{subject(7)}_flair\.nii\.gz",
        _run,
        ["train.yaml", "evaluate.yaml"],
        **values,
    )
    assert not (tmp_path / "fold0" / "metrics.json").exists()


def test_evaluation_with_skip_bad_cases_evaluates_the_good_held_out_cases_and_lists_the_bad_ones(
    cohort10, broken10, tmp_path
):
    """``skip_bad_cases: true``: the folds are those of the whole dataset, the bad held-out case is listed in
    metrics.json's ``skipped`` with its problem, and every good held-out case is evaluated."""
    import json

    from monai_protoshare.workflows.options import fold_split, load_datalist

    full = load_datalist(cohort10)
    fold = next(k for k in range(5) if subject(4) in {c["subject_id"] for c in fold_split(full, k)[1]})
    held_out = [c["subject_id"] for c in fold_split(full, fold)[1]]
    ckpt = tmp_path / "model.pt"
    torch.save(build_network("um_protoshare", **{k: TINY[k] for k in _NET[2:]}).state_dict(), ckpt)
    values = {**TINY, "dataset_dir": str(broken10), "output_dir": str(tmp_path), "ckpt_path": str(ckpt), "fold": fold}
    _run(["train.yaml", "evaluate.yaml"], skip_bad_cases=True, **values)
    metrics = json.loads((tmp_path / f"fold{fold}" / "metrics.json").read_text())
    skipped = {item["subject_id"]: item["problems"] for item in metrics["skipped"]}
    assert set(skipped) == {s for s in held_out if s in (subject(4), subject(7))}
    assert any("t1ce" in problem for problem in skipped[subject(4)])
    assert metrics["n"] == len(held_out) - len(skipped)
    record(
        "evaluate with skip_bad_cases: true (truncated T1-CE in the held-out fold)",
        "bundle evaluate",
        f"metrics over the {metrics['n']} good held-out cases; skipped: {', '.join(skipped)}",
    )


def test_a_bad_option_is_a_value_error_in_process_and_exit_status_2_on_the_command_line(cohort10, tmp_path, capfd):
    """In process the error is a catchable ``ValueError`` that prints nothing; ``python -m monai.bundle run ...
    --fold abc`` ends with status 2 and the error's one line on stderr, no traceback."""
    expected = "error: --fold: must be an integer in 0..4; got 'abc'."
    with pytest.raises(ValueError) as err:
        _train(cohort10, tmp_path, fold="abc")
    assert isinstance(err.value, BundleOptionError) and f"error: {err.value}" == expected
    assert "--fold" not in capfd.readouterr().err
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "train.yaml"),
               "--bundle_root", str(BUNDLE), "--dataset_dir", str(cohort10), "--output_dir", str(tmp_path), "--fold", "abc"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if "--fold" in line] == [expected]
    assert result.stderr.splitlines()[-1] == expected
    record("CLI: --fold abc (process exit)", "bundle (command line)", f"exit {result.returncode}, stderr: {expected}")
