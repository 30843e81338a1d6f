"""The schedule estimate of the GPU check (benchmarks/bench_schedule.py) against hand-computed numbers."""

from argparse import Namespace

import pytest
from bench_schedule import estimate


def test_estimate_adds_up_the_paper_schedule():
    result = {
        "batch": 32,
        "warmup_step_s": 1.0,
        "latent_step_s": 2.0,
        "classifier_step_s": 0.01,
        "push_s_per_case": 0.1,
        "forward_amp_s_per_case": 0.05,
    }
    macs = {"warmup": 1e9, "latent": 2e9, "forward": 0.5e9}
    est = estimate(result, macs, Namespace(train_cases=64, test_cases=10, folds=5))
    # 2 steps per epoch; 50 warm-up, 100 stage-1 epochs, 10 pushes, 10 x 10 stage-3 epochs (App. D.5)
    assert est["warmup_epoch_s"] == pytest.approx(2.0)
    assert est["latent_epoch_s"] == pytest.approx(4.0)
    assert est["push_s"] == pytest.approx(6.4)
    assert est["training_fold_s"] == pytest.approx(50 * 2 + 100 * 4 + 10 * 6.4 + 100 * 0.02)
    assert est["evaluation_s"] == pytest.approx(10 * (2 * 0.05 + 51 * 0.1))
    assert est["total_hours"] == pytest.approx(5 * (566 + 52) / 3600)
    flop_per_fold = 50 * 64 * 2e9 + 100 * 64 * 4e9 + 10 * 64 * 1e9 + 10 * 53 * 1e9
    assert est["total_pflop"] == pytest.approx(5 * flop_per_fold / 1e15)


def test_estimate_of_a_cnn_has_only_warm_up_epochs():
    est = estimate(
        {"batch": 8, "warmup_step_s": 0.5}, {"warmup": 1e9}, Namespace(train_cases=16, test_cases=4, folds=2)
    )
    assert est["training_fold_s"] == pytest.approx(50 * 2 * 0.5)
    assert "evaluation_s" not in est and est["total_pflop"] == pytest.approx(2 * 50 * 16 * 2e9 / 1e15)
