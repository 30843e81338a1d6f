"""Balanced accuracy (eq. 24): hand-computed values, sklearn, the cumulative metric and its errors."""

from __future__ import annotations

import warnings

import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from monai_protoshare.metrics import BalancedAccuracyMetric, compute_balanced_accuracy


def test_two_classes_equal_mean_of_tpr_and_tnr():
    y = torch.tensor([1, 1, 1, 1, 0, 0])
    pred = torch.tensor([1, 1, 1, 0, 1, 1])  # TPR = 3/4, TNR = 0/2
    assert compute_balanced_accuracy(pred, y) == pytest.approx((3 / 4 + 0) / 2)


def test_scores_are_reduced_by_argmax():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert compute_balanced_accuracy(scores, torch.tensor([0, 1, 1])) == pytest.approx((1 + 1 / 2) / 2)


@pytest.mark.parametrize("seed", range(5))
def test_matches_sklearn_including_classes_absent_from_labels(seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (23,), generator=g)  # class 2 never occurs in y ...
    scores = torch.rand(23, 3, generator=g)  # ... but may be predicted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about predicted classes absent from y_true
        expected = balanced_accuracy_score(y.numpy(), scores.argmax(1).numpy())
    assert compute_balanced_accuracy(scores, y) == pytest.approx(expected, abs=1e-12)
    assert compute_balanced_accuracy(scores.argmax(1), y, num_classes=3) == pytest.approx(expected, abs=1e-12)


def test_cumulative_metric_equals_function_on_all_cases_and_accepts_decollated_lists():
    g = torch.Generator().manual_seed(0)
    scores, y = torch.rand(9, 2, generator=g), torch.randint(0, 2, (9,), generator=g)
    metric = BalancedAccuracyMetric()
    metric(scores[:4], y[:4])
    metric(list(scores[4:]), [t for t in y[4:, None]])  # decollated: (C,) scores and (1,) labels per case
    assert metric.aggregate() == pytest.approx(compute_balanced_accuracy(scores, y))
    metric.reset()
    with pytest.raises(ValueError, match="no cases were accumulated"):
        metric.aggregate()


def test_label_outside_binary_range_names_the_case():
    with pytest.raises(ValueError, match=r"labels must lie in \{0, 1\}; case 2 has 3"):
        compute_balanced_accuracy(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="case 1 has 0.5"):
        compute_balanced_accuracy(torch.tensor([0, 1]), torch.tensor([0.0, 0.5]))


def test_empty_set_and_length_mismatch_raise():
    with pytest.raises(ValueError, match="no cases"):
        compute_balanced_accuracy(torch.zeros(0, 2), torch.zeros(0))
    with pytest.raises(ValueError, match="same number of cases, got 3 and 2"):
        compute_balanced_accuracy(torch.tensor([0, 1, 1]), torch.tensor([0, 1]))


def test_metric_error_names_the_running_case_index():
    metric = BalancedAccuracyMetric()
    metric(torch.tensor([0, 1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"case 1 has 2.*first case is case 2"):
        metric(torch.tensor([0, 1]), torch.tensor([1, 2]))
