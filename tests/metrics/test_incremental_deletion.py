"""Incremental deletion score (App. D.4; DESIGN §8): the peers' test vector and a loop reference (quantile order),
the paper's fixed fraction per step (rank order), hand-built predictors, batching, reuse of unchanged steps, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score

from monai_protoshare.metrics import (
    IncrementalDeletionMetric,
    compute_incremental_deletion,
    deletion_counts,
    deletion_curve,
    deletion_predictions,
    deletion_score,
    deletion_step_predictions,
)


class CountingPredictor:
    """Wraps a batch predictor and records the size of every batch it receives."""

    def __init__(self, fn):
        self.fn, self.batches = fn, []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(x))
        return self.fn(x)

    @property
    def samples(self) -> int:
        return sum(self.batches)


def _peers_example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, CountingPredictor]:
    """peers.md §8: 10 subjects 4x8x8x8, HGG boxes [2:5]^3 at 0.5 + 0.25 i, attr = box + 0.5 * ramp."""
    labels = torch.tensor([1, 1, 1, 1, 1, 1, 0, 0, 0, 1])
    images = torch.full((10, 4, 8, 8, 8), 0.1)
    for i in torch.nonzero(labels).flatten().tolist():
        images[i, :, 2:5, 2:5, 2:5] = 0.5 + 0.25 * i
    box = torch.zeros(8, 8, 8)
    box[2:5, 2:5, 2:5] = 1
    attribution = (box + 0.5 * torch.arange(512.0).reshape(8, 8, 8) / 512).expand(10, 4, 8, 8, 8)

    def net(x):
        hgg = 4 * x[:, 0, 2:5, 2:5, 2:5].mean(dim=(1, 2, 3)) - 1
        return torch.stack([torch.zeros_like(hgg), hgg], dim=1)

    return images, attribution, labels, CountingPredictor(net)


def test_peers_example_gives_their_curves_and_scores():
    images, attribution, labels, predict = _peers_example()
    ids, curve = compute_incremental_deletion(predict, images, attribution, labels, order="quantile")
    assert curve.tolist() == pytest.approx([1.0, 1.0, 0.7] + [0.3] * 48)
    assert ids == pytest.approx(4.1429, abs=1e-4)
    ids_bac, curve_bac = compute_incremental_deletion(
        predict, images, attribution, labels, metric="balanced_accuracy", order="quantile"
    )
    assert curve_bac[:4].tolist() == pytest.approx([1.0, 1.0, 11 / 14, 0.5])
    assert ids_bac == pytest.approx(4.1429, abs=1e-4)


def test_score_of_peers_curve_by_hand():
    # clip to [0.3, 1] and normalise: 1, 1, 4/7, 0, ...; trapezoids 1 + 11/14 + 2/7 over 50 intervals
    assert deletion_score([1.0, 1.0, 0.7] + [0.3] * 48) == pytest.approx((1 + 11 / 14 + 2 / 7) / 50 * 100)
    assert deletion_score([0.8, 0.9, 0.2, 0.8]) == 0.0  # start == end
    # rising curve whose middle overshoots the end: clipped to [0.5, 0.9], normalised 0, 1, 1
    assert deletion_score([0.5, 1.0, 0.9]) == pytest.approx((0.5 + 1) / 2 * 100)


def test_predictor_seeing_only_the_tumour_drops_when_the_tumour_is_gone():
    # 10x10x10 volume, 100 tumour voxels = 10 %: with 2 % steps the tumour is fully deleted at step 5 exactly
    # (|{a >= quantile(1 - k/50)}| = 1 + floor(19.98 k): 80 voxels at k = 4, 100 at k = 5)
    tumour = torch.zeros(10, 10, 10, dtype=torch.bool)
    tumour[2:7, 2:7, 2:6] = True
    labels = torch.tensor([1, 1, 1, 0, 0])
    images = torch.rand(5, 4, 10, 10, 10, generator=torch.Generator().manual_seed(0)) + 0.5
    images[:, :, tumour] = 0
    for i in torch.nonzero(labels).flatten().tolist():
        images[i][:, tumour] = 1.0
    ramp = torch.arange(1000.0).reshape(10, 10, 10) / 2000
    attribution = (tumour.float() + ramp).expand(5, 1, 10, 10, 10)

    def sees_tumour(x):
        present = (x[:, 0, tumour] != 0).any(dim=1).float()
        return torch.stack([1 - present, present], dim=1)

    _, curve = compute_incremental_deletion(sees_tumour, images, attribution, labels)
    assert curve.tolist() == [1.0] * 5 + [0.4] * 46


def _reference_predictions(predict, images, attribution, steps):
    """Plain loop: every case, every step, one forward each, the mask rebuilt from torch.quantile."""
    out = torch.zeros(images.shape[0], steps + 1, dtype=torch.long)
    for i in range(images.shape[0]):
        up = F.interpolate(attribution[i : i + 1].float(), size=images.shape[2:], mode="trilinear")
        a = up.mean(dim=1)[0]
        for k in range(steps + 1):
            x = images[i].clone()
            if k > 0:
                x[:, a >= torch.quantile(a.flatten(), 1 - k / steps)] = 0
            out[i, k] = predict(x[None]).argmax(dim=1).item()
    return out


def _reference_score(curve):
    lo, hi = min(curve[0], curve[-1]), max(curve[0], curve[-1])
    r = [min(max(v, lo), hi) for v in curve]
    r = [v - min(r) for v in r]
    top = max(max(r), 1e-12)
    r = [v / top for v in r]
    return 100 * sum((r[k] + r[k + 1]) / 2 for k in range(len(r) - 1)) / (len(r) - 1)


def _random_problem(seed: int, quantised: bool):
    """Random images, maps and labels, and a predictor whose class flips as deletion lowers a weighted mean."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(6, 4, 8, 8, 6, generator=g) * torch.linspace(0.4, 1.4, 6).view(6, 1, 1, 1, 1)
    weights = torch.rand(4, 8, 8, 6, generator=g)
    if quantised:  # four distinct values at full resolution: many tied voxels and repeated steps
        attribution = torch.randint(0, 4, (6, 1, 8, 8, 6), generator=g).float()
    else:  # coarse 2-channel maps, upsampled and averaged
        attribution = torch.rand(6, 2, 4, 4, 3, generator=g)
    labels = torch.randint(0, 2, (6,), generator=g)
    cut = 0.6 * (images * weights).mean(dim=(1, 2, 3, 4)).median()  # class 1 flips to 0 after ~40 % deleted

    def predict(x):  # one case at a time, so batched and unbatched logits are bitwise equal
        score = torch.stack([(xj * weights).mean() for xj in x])
        return torch.stack([torch.full_like(score, float(cut)), score], dim=1)

    return CountingPredictor(predict), images, attribution, labels


@pytest.mark.parametrize(("seed", "quantised"), [(0, False), (1, False), (2, True), (3, True)])
def test_matches_loop_reference_on_random_inputs(seed, quantised):
    predict, images, attribution, labels = _random_problem(seed, quantised)
    steps = 10
    expected = _reference_predictions(predict, images, attribution, steps)
    predictions = deletion_predictions(predict, images, attribution, steps=steps, batch_size=4, order="quantile")
    assert torch.equal(predictions, expected)
    assert len(expected.unique(dim=0)) > 2 and len(expected.unique(dim=1)) > 2  # predictions vary by case and step
    acc = [float((expected[:, k] == labels).double().mean()) for k in range(steps + 1)]
    bac = [balanced_accuracy_score(labels.numpy(), expected[:, k].numpy()) for k in range(steps + 1)]
    for metric, reference in (("accuracy", acc), ("balanced_accuracy", bac)):
        ids, curve = compute_incremental_deletion(
            predict, images, attribution, labels, steps, 4, metric, order="quantile"
        )
        assert curve.tolist() == pytest.approx(reference, abs=1e-6)
        assert ids == pytest.approx(_reference_score(reference), abs=1e-6)


def test_batched_and_unbatched_agree_and_step0_predictions_are_reused():
    predict, images, attribution, labels = _random_problem(4, quantised=False)
    one = deletion_predictions(predict, images, attribution, steps=10, batch_size=1)
    assert set(predict.batches) == {1}
    samples_with_step0 = predict.samples
    predict.batches.clear()
    many = deletion_predictions(predict, images, attribution, steps=10, batch_size=7)
    assert torch.equal(one, many)
    assert max(predict.batches) == 7
    predict.batches.clear()
    reused = deletion_predictions(predict, images, attribution, steps=10, batch_size=7, initial_predictions=one[:, 0])
    assert torch.equal(one, reused)
    assert predict.samples == samples_with_step0 - len(images)


def test_tied_voxels_are_deleted_together_and_repeated_steps_are_not_forwarded():
    # 30 % of the voxels share the top value: step 1 deletes all of them at once; the steps up to 70 % repeat that
    # mask; then everything is deleted (the shared all-zero input)
    n, shape = 3, (4, 10, 10, 10)
    attribution = torch.zeros(n, 1, 10, 10, 10)
    attribution[:, :, :3] = 1
    images = torch.rand(n, *shape, generator=torch.Generator().manual_seed(0)) + 0.5
    deleted_sizes = []

    def record(x):
        deleted_sizes.extend((x[:, 0] == 0).flatten(1).sum(dim=1).tolist())
        return torch.stack([x.mean(dim=(1, 2, 3, 4)), torch.full((len(x),), 0.5)], dim=1)

    predict = CountingPredictor(record)
    predictions = deletion_predictions(predict, images, attribution, steps=50, batch_size=8, order="quantile")
    assert sorted(set(deleted_sizes)) == [0, 300, 1000]
    assert predict.samples == 2 * n + 1 < 51 * n  # step 0 and the tie step per case, one all-zero input in all
    assert predictions.shape == (n, 51)
    assert (predictions[:, 0] == 0).all()  # image means > 0.5
    assert (predictions[:, -1] == 1).all()  # all-zero input: mean 0 < 0.5


def test_all_deleted_step_is_one_forward_for_the_whole_set():
    images, attribution, labels, predict = _peers_example()
    deletion_predictions(predict, images, attribution, steps=50, batch_size=64)
    # no ties: step 0 and steps 1..49 per case, and one all-zero input for the 10 cases' step 50
    assert predict.samples == 10 * 50 + 1


def test_cumulative_metric_over_two_batches_equals_the_function():
    images, attribution, labels, predict = _peers_example()
    metric = IncrementalDeletionMetric(predict, batch_size=16)
    metric(images[:4], labels[:4], attribution[:4])
    metric(list(images[4:]), list(labels[4:]), list(attribution[4:]))  # decollated
    result = metric.aggregate()
    ids, curve = compute_incremental_deletion(predict, images, attribution, labels)
    assert result["ids"] == pytest.approx(ids)
    assert torch.allclose(result["curve"], curve)
    assert result["curve_bac"].shape == (51,)
    assert result["ids_peer"] == pytest.approx(4.1429, abs=1e-4) and result["ids_peer_bac"] == pytest.approx(
        4.1429, abs=1e-4
    )
    assert result["curve_peer"].tolist() == pytest.approx([1.0, 1.0, 0.7] + [0.3] * 48)
    assert [t.shape for t in metric.get_buffer()] == [(10, 51), (10, 51), (10,)]


def _deleted_per_step(attribution: torch.Tensor, order: str, seed: int = 0, steps: int = 50) -> list[list[int]]:
    """Number of deleted voxels each step's input holds, per case (deleted = 0 in every channel of a positive image)."""
    n = attribution.shape[0]
    images = torch.rand(n, 2, *attribution.shape[2:], generator=torch.Generator().manual_seed(1)) + 0.5
    seen: dict[int, list] = {}

    def record(x):
        for xi in x:
            seen.setdefault(int((xi[0] == 0).sum()), []).append(xi[0] == 0)
        return torch.zeros(len(x), 2)

    predictions = deletion_step_predictions(
        record, images, attribution, steps, batch_size=16, orders=(order,), seed=seed
    )
    return sorted(seen), seen, predictions


def test_rank_order_deletes_exactly_two_percent_per_step_of_a_map_with_ninety_percent_zeros():
    # 10x10x5 = 500 voxels, 50 of them attributed (10 %): the paper's text deletes 10 voxels (2 %) a step; the
    # peers' quantile order deletes every zero at once when the threshold reaches 0 (step 5: the 90 % quantile)
    attribution = torch.zeros(2, 1, 10, 10, 5)
    attribution[0, 0, :5, :2] = torch.arange(1.0, 51.0).view(5, 2, 5)
    attribution[1, 0, 5:, 8:] = 1.0  # the 50 attributed voxels tie as well
    counts, masks, _ = _deleted_per_step(attribution, "rank")
    assert counts == [10 * k for k in range(51)]
    assert len(masks[500]) == 1  # step 50: one all-zero input shared by the set
    for k in range(1, 6):  # the attributed voxels go first, in order of attribution
        assert masks[10 * k][0][:5, :2].sum() == 10 * k and masks[10 * k][1][5:, 8:].sum() == 10 * k
    assert all(len(masks[c]) == 2 for c in counts[:-1])  # each step of each case forwarded once
    for case in range(2):
        flat = attribution[case].flatten()
        assert deletion_counts(flat, 50) == [10 * k for k in range(51)]
        # quantile order: once the threshold reaches 0 (step 6), all 450 zeros go together
        assert deletion_counts(flat, 50, "quantile")[:7] == (
            [0, 10, 20, 30, 40, 50] if case == 0 else [0] + [50] * 5
        ) + [500]


def test_rank_order_breaks_ties_by_a_seeded_permutation_independent_of_batching():
    attribution = torch.zeros(3, 1, 10, 10, 5)  # all voxels tied: the order is the permutation alone
    _, first, _ = _deleted_per_step(attribution, "rank", seed=0)
    _, again, _ = _deleted_per_step(attribution, "rank", seed=0)
    _, other, _ = _deleted_per_step(attribution, "rank", seed=1)
    assert all(torch.equal(m, n) for m, n in zip(first[240], again[240]))
    assert torch.equal(first[240][0], first[240][2])  # one permutation for every case: no batch dependence
    assert not torch.equal(first[240][0], other[240][0])
    assert all(torch.equal(first[10 * k][0] & first[10 * (k + 1)][0], first[10 * k][0]) for k in range(49))  # nested


def test_both_orders_share_the_inputs_they_have_in_common():
    images, attribution, labels, predict = _peers_example()
    both = deletion_step_predictions(predict, images, attribution, steps=50, batch_size=64)
    shared = predict.samples
    predict.batches.clear()
    rank = deletion_predictions(predict, images, attribution, steps=50, batch_size=64)
    alone = predict.samples
    predict.batches.clear()
    assert torch.equal(both["rank"], rank)
    assert torch.equal(both["quantile"], deletion_predictions(predict, images, attribution, order="quantile"))
    assert alone < shared < alone + predict.samples - 10  # equal counts (and step 0, all-zero) forwarded once


def test_bad_inputs_raise_with_clear_messages():
    images, attribution, labels, predict = _peers_example()
    with pytest.raises(ValueError, match=r"labels must lie in \{0, 1\}; case 3 has 2"):
        compute_incremental_deletion(predict, images[:4], attribution[:4], torch.tensor([0, 1, 1, 2]))
    assert predict.samples == 0  # labels are checked before any forward
    bad = attribution.clone()
    bad[7, 2, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="attribution of case 7 contains NaN or Inf"):
        deletion_predictions(predict, images, bad)
    with pytest.raises(ValueError, match="same number of cases, got 10 and 9"):
        deletion_predictions(predict, images, attribution[:9])
    with pytest.raises(ValueError, match="no cases"):
        deletion_predictions(predict, images[:0], attribution[:0])
    with pytest.raises(ValueError, match=r"predict must return logits \(m, C\)"):
        deletion_predictions(lambda x: x.mean(dim=(1, 2, 3, 4)), images[:1], attribution[:1], steps=2)
    with pytest.raises(ValueError, match="balanced_accuracy"):
        deletion_curve(torch.zeros(2, 3, dtype=torch.long), torch.tensor([0, 1]), metric="balanced_acc")
    metric = IncrementalDeletionMetric(predict, steps=2)
    metric(images[:2], labels[:2], attribution[:2])
    with pytest.raises(ValueError, match=r"case 1 contains NaN.*first case is case 2"):
        metric(images[:2], labels[:2], bad[6:8])
