"""Segmentation metrics (issue 23): Dice/HD95 per region and the deletion curve of a segmentation map."""

from __future__ import annotations

import math

import pytest
import torch

from monai_protoshare.metrics.segmentation import (
    compute_region_metrics,
    deletion_order,
    segmentation_deletion_curve,
    summarise_region_metrics,
)


def _tumour_case():
    """A 10³ image whose 100-voxel tumour (10 % of the volume, 5 steps of 2 %) is bright in channel 0."""
    tumour = torch.zeros(10, 10, 10)
    tumour[2:7, 3:8, 4:8] = 1  # 5 x 5 x 4 = 100 voxels
    image = torch.stack([tumour, torch.zeros_like(tumour)])[None]
    return image, tumour


def _predict(x: torch.Tensor) -> torch.Tensor:
    """Region 1's logit is +10 where channel 0 is bright, -10 elsewhere; region 0 is constant."""
    return torch.cat([torch.zeros_like(x[:, :1]), 20 * (x[:, :1] - 0.5)], dim=1)


def test_deletion_curve_of_the_tumour_map_falls_at_the_step_the_tumour_is_gone():
    image, tumour = _tumour_case()
    curve, area = segmentation_deletion_curve(
        _predict, image, tumour, region=1, measure="dice", target=tumour, steps=50
    )
    # step k deletes 20 k voxels, all in the tumour until k = 5: Dice = 2 (100 - 20k) / (200 - 20k)
    expected = [2 * (100 - 20 * k) / (200 - 20 * k) for k in range(5)]
    assert curve.shape == (51,)
    assert curve[:5].tolist() == pytest.approx(expected, abs=1e-6)
    assert curve[5:].abs().max() == 0
    assert area == pytest.approx(100 * sum((a + b) / 2 for a, b in zip(expected, expected[1:] + [0.0])) / 50)

    probability, _ = segmentation_deletion_curve(_predict, image, tumour, region=1, steps=50, batch_size=7)
    on, off = torch.sigmoid(torch.tensor([10.0, -10.0])).tolist()
    assert probability[0] == pytest.approx(100 * on + 900 * off, rel=1e-5)
    assert probability[4] == pytest.approx(20 * on + 980 * off, rel=1e-5)
    assert probability[5:].tolist() == pytest.approx([1000 * off] * 46, rel=1e-4)

    _, reversed_area = segmentation_deletion_curve(_predict, image, 1 - tumour, region=1, measure="dice", target=tumour)
    assert area < 10 < 90 < reversed_area  # the background-first map keeps the tumour until the last steps


def test_deletion_order_breaks_ties_by_seed_only():
    a = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.5, 1.0])
    first = deletion_order(a, seed=3)
    assert set(first[:4].tolist()) == {1, 2, 3, 5} and first[4:].tolist() == [4, 0]
    assert torch.equal(first, deletion_order(a, seed=3))
    assert any(not torch.equal(first, deletion_order(a, seed=s)) for s in range(4, 10))


def test_deletion_curve_errors():
    image, tumour = _tumour_case()
    with pytest.raises(ValueError, match="needs target"):
        segmentation_deletion_curve(_predict, image, tumour, region=1, measure="dice")
    with pytest.raises(ValueError, match="one case"):
        segmentation_deletion_curve(_predict, image[0], tumour, region=1)
    with pytest.raises(ValueError, match="probability"):
        segmentation_deletion_curve(_predict, image, tumour, region=1, measure="auc")


def test_region_dice_and_hd95_follow_the_brats_conventions():
    y = torch.zeros(1, 3, 8, 8, 8)
    y[0, :2, 2:6, 2:6, 2:6] = 1  # regions 0 and 1 present, region 2 empty
    y_pred = y.clone()
    y_pred[0, 1, 2:6, 2:6, 5] = 0  # region 1: one slice of 4 missing
    metrics = compute_region_metrics(y_pred, y, spacing=2.0)
    assert metrics["dice"][0].tolist() == pytest.approx([1.0, 2 * 48 / (48 + 64), 1.0])
    assert metrics["hd95"][0, 0] == 0 and metrics["hd95"][0, 2] == 0  # perfect, and both empty
    assert metrics["hd95"][0, 1] == pytest.approx(2.0)  # the missing slice is one voxel (2 mm) away
    y_pred[0, 2, 0, 0, 0] = 1  # a false positive where the truth is empty
    metrics = compute_region_metrics(y_pred, y)
    assert metrics["dice"][0, 2] == 0 and math.isnan(metrics["hd95"][0, 2])
    summary = summarise_region_metrics(metrics, ("TC", "WT", "ET"))
    assert summary["dice_TC"] == 1.0 and summary["hd95_undefined_ET"] == 1 and math.isnan(summary["hd95_ET"])
    with pytest.raises(ValueError, match="y_pred and y"):
        compute_region_metrics(y_pred, y[:, :2])
