"""Expected calibration error and the reliability diagram: hand-computed values, a loop reference, errors."""

from __future__ import annotations

import io

import pytest
import torch
from matplotlib.figure import Figure

from monai_protoshare.metrics import (
    ExpectedCalibrationErrorMetric,
    calibration_bins,
    compute_expected_calibration_error,
    reliability_diagram,
)

# p(class 1) and labels: confidences 0.95 (right), 0.85 (wrong), 0.72 (right), 0.82 (right), 0.65 (right)
P1 = torch.tensor([0.95, 0.85, 0.28, 0.18, 0.65], dtype=torch.float64)
Y = torch.tensor([1, 0, 0, 0, 1])
# bins (0.9, 1]: |1 - 0.95|; (0.8, 0.9]: |0.5 - 0.835| x 2; (0.7, 0.8]: |1 - 0.72|; (0.6, 0.7]: |1 - 0.65|
HAND_ECE = (0.05 + 2 * 0.335 + 0.28 + 0.35) / 5


def test_ece_matches_hand_computed_value_for_all_probability_layouts():
    assert compute_expected_calibration_error(P1, Y) == pytest.approx(HAND_ECE)
    two_columns = torch.stack([1 - P1, P1], dim=1)
    assert compute_expected_calibration_error(two_columns, Y) == pytest.approx(HAND_ECE)
    assert compute_expected_calibration_error(P1[:, None], Y[:, None]) == pytest.approx(HAND_ECE)
    assert compute_expected_calibration_error(P1, Y, n_bins=1) == pytest.approx(abs(4 / 5 - 0.798))


def test_bins_hold_mean_confidence_accuracy_and_counts():
    confidence, accuracy, counts = calibration_bins(P1, Y)
    assert counts.tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 2, 1]
    assert confidence[6:].tolist() == pytest.approx([0.65, 0.72, 0.835, 0.95])
    assert accuracy[6:].tolist() == pytest.approx([1.0, 1.0, 0.5, 1.0])
    assert torch.isnan(confidence[:6]).all() and torch.isnan(accuracy[:6]).all()


def test_bins_are_closed_on_the_right():
    # confidences 0.5, 0.75, 1.0 on exact edges of 4 bins: (0.25, 0.5], (0.5, 0.75], (0.75, 1]
    _, _, counts = calibration_bins(torch.tensor([0.5, 0.75, 1.0], dtype=torch.float64), torch.tensor([1, 1, 1]), 4)
    assert counts.tolist() == [0, 1, 1, 1]


@pytest.mark.parametrize("seed", range(3))
def test_ece_matches_loop_reference_on_random_probabilities(seed):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(40, 3, generator=g) * 2, dim=1)
    y = torch.randint(0, 3, (40,), generator=g)
    expected = 0.0
    for b in range(10):
        lo, hi = b / 10, (b + 1) / 10
        members = [i for i in range(40) if (lo < probs[i].max() <= hi) or (b == 0 and probs[i].max() == 0)]
        if members:
            conf = sum(float(probs[i].max()) for i in members) / len(members)
            acc = sum(int(probs[i].argmax() == y[i]) for i in members) / len(members)
            expected += len(members) / 40 * abs(acc - conf)
    assert compute_expected_calibration_error(probs, y) == pytest.approx(expected, abs=1e-6)


def test_reliability_diagram_returns_a_figure_with_the_bin_accuracies():
    fig = reliability_diagram(P1, Y, title="fold 0")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    heights = [patch.get_height() for patch in ax.containers[0]]
    assert heights == pytest.approx([1.0, 1.0, 0.5, 1.0])
    assert ax.get_title() == f"fold 0: ECE = {HAND_ECE:.3f} (N = 5)"
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG")


def test_cumulative_metric_equals_function():
    metric = ExpectedCalibrationErrorMetric()
    metric(torch.stack([1 - P1[:2], P1[:2]], dim=1), Y[:2])
    metric([torch.stack([1 - p, p]) for p in P1[2:]], list(Y[2:]))
    assert metric.aggregate() == pytest.approx(HAND_ECE)


def test_bad_inputs_raise_with_clear_messages():
    with pytest.raises(ValueError, match=r"probs of case 1 are not probabilities.*softmax"):
        compute_expected_calibration_error(torch.tensor([[0.2, 0.8], [2.0, -1.0]]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels must lie in \{0, 1\}; case 0 has 5"):
        compute_expected_calibration_error(P1[:2], torch.tensor([5, 0]))
    with pytest.raises(ValueError, match="no cases"):
        compute_expected_calibration_error(torch.zeros(0, 2), torch.zeros(0))
    with pytest.raises(ValueError, match="n_bins must be >= 1"):
        compute_expected_calibration_error(P1, Y, n_bins=0)
