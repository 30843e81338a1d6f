"""Activation precision (eq. 25): hand-computed cases, the peers' test vector (peers.md §8), a loop reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monai_protoshare.metrics import ActivationPrecisionMetric, compute_activation_precision


def _peers_example() -> tuple[torch.Tensor, torch.Tensor]:
    """peers.md §8: 4x4x4 volume, g = 16x + 4y + z, attribution channel c = (63 - g) + 10c."""
    g = torch.arange(64.0).reshape(4, 4, 4)
    seg = torch.zeros(4, 4, 4)
    seg[:2] = 1
    seg[3, 3, 3], seg[3, 3, 2] = 4, 3
    mask = torch.isin(seg, torch.tensor([1.0, 2.0, 4.0])).float()[None, None]  # whole tumour; label 3 never counts
    attribution = torch.stack([(63 - g) + 10 * c for c in range(4)])[None]  # (1, 4, 4, 4, 4)
    return attribution, mask


def test_map_equal_to_mask_gives_one_and_map_outside_gives_zero():
    mask = torch.zeros(2, 1, 8, 8, 6)
    mask[0, :, 2:5, 2:5, 1:4] = 1
    mask[1, :, :3] = 1
    assert compute_activation_precision(mask.clone(), mask).tolist() == [1.0, 1.0]
    assert compute_activation_precision(1 - mask, mask).tolist() == [0.0, 0.0]


def test_peers_four_channel_example_normalises_jointly_over_channels():
    attribution, mask = _peers_example()
    per_channel = compute_activation_precision(attribution, mask, per_channel=True)
    assert per_channel[0].tolist() == pytest.approx([1.0, 1.0, 32 / 37, 32 / 47])
    assert per_channel[0].tolist() == pytest.approx([1.0, 1.0, 0.864865, 0.680851], abs=1e-6)
    assert compute_activation_precision(attribution, mask).item() == pytest.approx((2 + 32 / 37 + 32 / 47) / 4)
    same = attribution[:, :1].expand(1, 4, 4, 4, 4)
    assert compute_activation_precision(same, mask, per_channel=True)[0].tolist() == [1.0] * 4
    zero = torch.zeros_like(attribution)
    assert compute_activation_precision(zero, mask, per_channel=True)[0].tolist() == [0.0] * 4


def test_coarse_map_is_upsampled_trilinearly_without_corner_alignment():
    # a 2x2x2 map that is 1 at x = 0 and 0 at x = 1, upsampled to 8: with align_corners=False the profile along x
    # is [1, 1, 0.875, 0.625, 0.375, 0.125, 0, 0] (align_corners=True gives 1 - x/7, nearest [1]*4 + [0]*4)
    attribution = torch.zeros(1, 1, 2, 2, 2)
    attribution[:, :, 0] = 1
    mask = torch.zeros(1, 1, 8, 8, 8)
    mask[:, :, :3] = 1
    assert compute_activation_precision(attribution, mask, threshold=0.75).item() == 1.0  # x < 3 active
    mask[:, :, 2] = 0
    assert compute_activation_precision(attribution, mask, threshold=0.75).item() == pytest.approx(2 / 3)
    mask[:, :, :4] = 1
    assert compute_activation_precision(attribution, mask).item() == 1.0  # threshold 0.5: x < 4 active


def _reference_ap(attribution: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5) -> np.ndarray:
    """Plain loop over cases and channels (numpy), following eq. (25) and peers.md §7 literally."""
    out = np.zeros(attribution.shape[:2])
    for b in range(attribution.shape[0]):
        up = F.interpolate(attribution[b : b + 1].double(), size=mask.shape[2:], mode="trilinear")[0].numpy()
        a = up - up.min()
        a = a / max(a.max(), 1e-12)
        region = mask[b, 0].numpy() != 0
        for c in range(a.shape[0]):
            active = a[c] >= threshold
            out[b, c] = (active & region).sum() / max(active.sum(), 1)
    return out


@pytest.mark.parametrize("seed", range(3))
def test_matches_loop_reference_on_random_maps(seed):
    g = torch.Generator().manual_seed(seed)
    attribution = torch.rand(3, 2, 4, 4, 3, generator=g, dtype=torch.float64)
    mask = (torch.rand(3, 1, 8, 8, 6, generator=g) > 0.6).float()
    expected = _reference_ap(attribution, mask)
    np.testing.assert_allclose(compute_activation_precision(attribution, mask, per_channel=True), expected, atol=1e-6)
    np.testing.assert_allclose(compute_activation_precision(attribution, mask), expected.mean(1), atol=1e-6)


def test_cumulative_metric_keeps_per_case_values_and_averages_them():
    attribution, mask = _peers_example()
    metric = ActivationPrecisionMetric(per_channel=True)
    metric(attribution, mask)
    metric([attribution[0, [3, 2, 1, 0]]], [mask[0]])  # decollated, channels reversed
    assert metric.get_buffer().shape == (2, 4)
    outer, inner = (1 + 32 / 47) / 2, (1 + 32 / 37) / 2
    assert metric.aggregate().tolist() == pytest.approx([outer, inner, inner, outer])
    mean_metric = ActivationPrecisionMetric()
    mean_metric(attribution, mask)
    assert mean_metric.aggregate().item() == pytest.approx((2 + 32 / 37 + 32 / 47) / 4)


def test_bad_inputs_raise_with_clear_messages():
    mask = torch.zeros(2, 1, 8, 8, 6)
    with pytest.raises(ValueError, match="same number of cases, got 3 and 2"):
        compute_activation_precision(torch.rand(3, 1, 4, 4, 3), mask)
    nan_map = torch.rand(2, 1, 4, 4, 3)
    nan_map[1, 0, 1, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="attribution of case 1 contains NaN or Inf"):
        compute_activation_precision(nan_map, mask)
    with pytest.raises(ValueError, match="the mask must have the image's spatial shape"):
        compute_activation_precision(torch.rand(2, 1, 16, 8, 6), mask)
    with pytest.raises(ValueError, match=r"mask \(B, 1, H, W, D\)"):
        compute_activation_precision(torch.rand(2, 1, 4, 4, 3), torch.zeros(2, 2, 8, 8, 6))
    with pytest.raises(ValueError, match="no cases"):
        compute_activation_precision(torch.rand(0, 1, 4, 4, 3), torch.zeros(0, 1, 8, 8, 6))
    with pytest.raises(ValueError, match="no cases were accumulated"):
        ActivationPrecisionMetric().aggregate()
