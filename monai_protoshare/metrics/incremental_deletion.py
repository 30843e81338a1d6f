"""Incremental deletion score, IDS (App. D.4; DESIGN §8): how fast accuracy falls as the most attributed voxels go.

At step k = 0..S (S = 50: 2 % steps) voxels of the upsampled, channel-averaged attribution map are set to 0 in every
sequence, the most attributed first (nothing at k = 0, everything at k = S). Two deletion orders (``order``):

- ``"rank"`` (default, the paper's text: "a fixed fraction of the most highly attributed voxels is progressively
  removed"): exactly round(k·V/S) of the V voxels at step k, in rank order, ties broken by a seeded permutation;
- ``"quantile"`` (the peers' code, ``reference/peers.md`` §7): the voxels at or above the case's
  ``torch.quantile(a, 1 - k/S)``, so tied voxels go together (a map with 90 % zeros deletes everything at step 5).

The (balanced) accuracy over the evaluation set at each step is a curve of S + 1 points, scored by
:func:`deletion_score`. Lower is better: faithful evidence removes the information the model uses first.

Cost: both orders delete a prefix of the same tie-broken ranking (a quantile's tie groups are whole), so a step is
fully described by its number of deleted voxels. The inputs of every distinct count of every case go through
``predict`` once, in batches, whichever orders and steps share it; the all-zero input is forwarded once for the whole
set, and step 0 reuses the caller's predictions when given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from monai.utils import look_up_option

from monai_protoshare.metrics.balanced_accuracy import compute_balanced_accuracy
from monai_protoshare.metrics.utils import (
    DEFAULT_NUM_CLASSES,
    BatchCumulativeMetric,
    as_class_indices,
    check_finite,
    predicted_classes,
    resize_attribution,
)

__all__ = [
    "DELETION_ORDERS",
    "IncrementalDeletionMetric",
    "compute_incremental_deletion",
    "deletion_counts",
    "deletion_curve",
    "deletion_predictions",
    "deletion_ranks",
    "deletion_score",
    "deletion_step_predictions",
]

#: 50 steps of 2 % (App. D.4).
DEFAULT_STEPS = 50
#: Deleted inputs per forward of ``predict``.
DEFAULT_BATCH_SIZE = 8
#: Set-level metrics a deletion curve can follow: the paper's text uses accuracy, MProtoNet's tables BAC.
CURVE_METRICS = ("accuracy", "balanced_accuracy")
#: Deletion orders: the paper's fixed fraction per step (default), the peers' quantile thresholds.
DELETION_ORDERS = ("rank", "quantile")
#: Seed of the permutation that breaks ties in the ``"rank"`` order.
DEFAULT_SEED = 0
#: Floor of the normalising range, as in the peers' ``process_iad`` (a flat curve scores 0).
_EPS = 1e-12


def _check_inputs(images: torch.Tensor, attribution: torch.Tensor) -> None:
    if images.ndim != 5 or attribution.ndim != 5:
        raise ValueError(
            f"images must be (N, C, H, W, D) and attribution (N, A, h, w, d); got {tuple(images.shape)} and "
            f"{tuple(attribution.shape)}."
        )
    if images.shape[0] != attribution.shape[0]:
        raise ValueError(
            f"images and attribution must hold the same number of cases, got {images.shape[0]} and "
            f"{attribution.shape[0]}."
        )
    if images.shape[0] == 0:
        raise ValueError("images is empty (batch size 0): the evaluation set has no cases.")
    check_finite(attribution, "attribution")


def deletion_ranks(flat: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """Deletion rank of every voxel (0 = deleted first): descending attribution, ties in ``permutation``'s order.

    Args:
        flat: one case's attribution (V,).
        permutation: a permutation of range(V) (e.g. ``torch.randperm(V, generator=...)``) breaking ties.

    Returns:
        Ranks (V,), int64: step k of an order deletes the voxels of rank < its count.
    """
    shuffled = flat[permutation]
    order = permutation[torch.sort(shuffled, descending=True, stable=True).indices]
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(len(order), device=order.device)
    return ranks


def deletion_counts(flat: torch.Tensor, steps: int, order: str = "rank") -> list[int]:
    """Number of voxels deleted at each step k = 0..S (S + 1 ints) of one case's attribution ``flat`` (V,).

    ``"rank"``: round(k·V/S) (half up, in integers). ``"quantile"``: |{a ≥ torch.quantile(a, 1 − k/S)}| with the
    quantile's linear interpolation and the levels as Python floats cast to the map's dtype, as the peers' code.
    """
    n = flat.numel()
    if look_up_option(order, DELETION_ORDERS) == "rank":
        return [(2 * k * n + steps) // (2 * steps) for k in range(steps + 1)]
    levels = torch.tensor([1 - k / steps for k in range(1, steps + 1)], dtype=flat.dtype, device=flat.device)
    thresholds = torch.quantile(flat, levels)
    deleted = n - torch.searchsorted(flat.sort().values, thresholds)  # |{a >= t_k}|, k = 1..S
    return [0] + deleted.tolist()


def _deletion_jobs(
    images: torch.Tensor, attribution: torch.Tensor, steps: int, orders: Sequence[str], seed: int, counts: list
) -> Iterator[tuple[int, int, torch.Tensor | None]]:
    """Yield (case, deleted count, voxels to keep (H, W, D) or None) for every distinct count of every case.

    Fills ``counts`` with one list per case of each order's S + 1 counts. Count 0 (the unmodified image) is
    yielded as keep = None; full deletion is left to the caller (one all-zero input for the set). Memory: one map
    (H, W, D) and its ranks at a time.
    """
    spatial = images.shape[2:]
    num_voxels = spatial.numel()
    permutation = torch.randperm(num_voxels, generator=torch.Generator().manual_seed(seed)).to(images.device)
    for i in range(images.shape[0]):
        flat = resize_attribution(attribution[i : i + 1], spatial).mean(dim=1)[0].flatten()  # (V,)
        per_order = [deletion_counts(flat, steps, order) for order in orders]
        counts.append(per_order)
        distinct = sorted({c for case_counts in per_order for c in case_counts} - {num_voxels})
        ranks = deletion_ranks(flat, permutation) if distinct and distinct[-1] > 0 else None
        for c in distinct:
            yield i, c, None if c == 0 else (ranks >= c).view(spatial)


def deletion_step_predictions(
    predict: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    attribution: torch.Tensor,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    initial_predictions: torch.Tensor | None = None,
    orders: Sequence[str] = DELETION_ORDERS,
    seed: int = DEFAULT_SEED,
) -> dict[str, torch.Tensor]:
    """Predicted class of every case at every deletion step of each order (App. D.4), from one set of forwards.

    Args:
        predict: maps images (m, C_in, H, W, D) to logits (m, C); called under ``torch.no_grad()`` (put a network
            in eval mode; wrap networks with rich outputs, e.g. ``lambda x: net(x).logits``).
        images: the unmodified inputs (N, C_in, H, W, D); deleted voxels are set to 0 in every channel.
        attribution: maps (N, A, h, w, d), upsampled trilinearly to (H, W, D) and averaged over A.
        steps: S, the number of deletion steps (S + 1 points, 100/S % each).
        batch_size: inputs per forward of ``predict``.
        initial_predictions: predictions for the unmodified images, class indices (N,) or logits (N, C), to reuse
            at step 0; computed when None.
        orders: deletion orders among :data:`DELETION_ORDERS`.
        seed: seed of the tie-breaking permutation (one permutation of the V voxels, the same for every case, so
            results do not depend on batching).

    Returns:
        ``{order: class indices (N, S + 1)}``, int64, on the CPU.

    Raises:
        ValueError: on shapes that do not fit, an empty set, NaN/Inf in a map (naming the case), an unknown order,
            or ``predict`` returning something other than (m, C) logits.
    """
    images, attribution = torch.as_tensor(images), torch.as_tensor(attribution)
    _check_inputs(images, attribution)
    orders = [look_up_option(o, DELETION_ORDERS) for o in orders]
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got steps={steps} and batch_size={batch_size}.")
    attribution = attribution.to(images.device)
    n, num_voxels = images.shape[0], images.shape[2:].numel()
    by_count: dict[tuple[int, int], int] = {}  # (case, deleted count) -> class; case -1: the all-zero input
    if initial_predictions is not None:
        initial, _ = predicted_classes(torch.as_tensor(initial_predictions), "initial_predictions")
        if len(initial) != n:
            raise ValueError(f"initial_predictions must hold {n} cases (one per image), got {len(initial)}.")
        by_count.update({(i, 0): c for i, c in enumerate(initial.tolist())})
    # inputs are built in place, one batch at a time: never all S + 1 copies of a volume at once
    buffer = images.new_empty((min(batch_size, n * (steps + 1) + 1), *images.shape[1:]))
    pending: list[tuple[int, int]] = []

    def flush() -> None:
        logits = predict(buffer[: len(pending)])
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != len(pending):
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"predict must return logits (m, C) for m = {len(pending)} inputs; got {got}.")
        by_count.update(zip(pending, logits.argmax(dim=1).tolist(), strict=True))
        pending.clear()

    def add(i: int, c: int, keep: torch.Tensor | None) -> None:
        slot = buffer[len(pending)]
        if i < 0:
            slot.zero_()
        elif keep is None:
            slot.copy_(images[i])
        else:
            torch.mul(images[i], keep, out=slot)
        pending.append((i, c))
        if len(pending) == batch_size:
            flush()

    counts: list[list[list[int]]] = []  # case -> order -> the S + 1 deleted counts
    with torch.no_grad():
        for i, c, keep in _deletion_jobs(images, attribution, steps, orders, seed, counts):
            if (i, c) not in by_count:  # step 0 given by the caller
                add(i, c, keep)
        if any(num_voxels in order_counts for case_counts in counts for order_counts in case_counts):
            add(-1, num_voxels, None)
        if pending:
            flush()
    return {
        order: torch.tensor(
            [[by_count[(-1 if c == num_voxels else i, c)] for c in counts[i][j]] for i in range(n)], dtype=torch.long
        )
        for j, order in enumerate(orders)
    }


def deletion_predictions(
    predict: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    attribution: torch.Tensor,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    initial_predictions: torch.Tensor | None = None,
    order: str = "rank",
    seed: int = DEFAULT_SEED,
) -> torch.Tensor:
    """Predicted class of every case at every deletion step of one ``order``: class indices (N, S + 1), int64.

    See :func:`deletion_step_predictions` for the arguments and errors.
    """
    return deletion_step_predictions(
        predict, images, attribution, steps, batch_size, initial_predictions, (order,), seed
    )[look_up_option(order, DELETION_ORDERS)]


def deletion_curve(
    predictions: torch.Tensor, labels: torch.Tensor, metric: str = "accuracy", num_classes: int | None = None
) -> torch.Tensor:
    """Set-level accuracy or balanced accuracy at each deletion step.

    Args:
        predictions: class indices (N, S + 1) from :func:`deletion_predictions`.
        labels: ground-truth class indices (N,) or (N, 1), or one-hot (N, C).
        metric: ``"accuracy"`` (the paper's text) or ``"balanced_accuracy"`` (MProtoNet's tables).
        num_classes: C; defaults to 2.

    Returns:
        The curve (S + 1,), float64.

    Raises:
        ValueError: on an unknown ``metric`` (suggesting the closest), labels outside ``range(num_classes)``, or
            a number of labels different from N.
    """
    metric = look_up_option(metric, CURVE_METRICS)
    num_classes = num_classes or DEFAULT_NUM_CLASSES
    labels = as_class_indices(labels, "labels", num_classes)
    predictions = torch.as_tensor(predictions).cpu()
    if predictions.ndim != 2 or predictions.shape[0] != len(labels):
        raise ValueError(
            f"predictions must be (N, S + 1) with N = {len(labels)} labels, got {tuple(predictions.shape)}."
        )
    if metric == "accuracy":
        return (predictions == labels.cpu()[:, None]).double().mean(dim=0)
    return torch.tensor([compute_balanced_accuracy(p, labels, num_classes) for p in predictions.T], dtype=torch.double)


def deletion_score(curve: torch.Tensor | Sequence[float]) -> float:
    """IDS in percent (App. D.4, as the peers' ``process_iad``): the normalised area under a deletion curve.

    The curve is clipped to [min, max] of its first and last points, min-max normalised (a curve whose first and
    last points are equal scores 0), and its area is the mean of the trapezoids over the S intervals, × 100.

    Args:
        curve: (S + 1,) values at the deletion steps, S >= 1 (a tensor or a sequence of floats).

    Returns:
        IDS in [0, 100]; lower is better.

    Example:
        >>> deletion_score([1.0, 1.0, 0.7] + [0.3] * 48)  # peers' test vector, ID = 0.041429
        4.142857142857143
    """
    curve = torch.as_tensor(curve, dtype=torch.double).flatten()
    if curve.numel() < 2:
        raise ValueError(f"curve needs at least 2 points (S >= 1 steps), got {curve.numel()}.")
    low, high = sorted((float(curve[0]), float(curve[-1])))
    r = curve.clamp(low, high)
    r = r - r.min()
    r = r / r.max().clamp_min(_EPS)
    return float(((r[:-1] + r[1:]) / 2).mean()) * 100


def compute_incremental_deletion(
    predict: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    attribution: torch.Tensor,
    labels: torch.Tensor,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    metric: str = "accuracy",
    initial_predictions: torch.Tensor | None = None,
    num_classes: int | None = None,
    order: str = "rank",
    seed: int = DEFAULT_SEED,
) -> tuple[float, torch.Tensor]:
    """Incremental deletion score over an evaluation set (App. D.4; DESIGN §8).

    For both the accuracy and the balanced-accuracy score from one set of forwards, call
    :func:`deletion_predictions` once, then :func:`deletion_curve` and :func:`deletion_score` per metric (or use
    :class:`IncrementalDeletionMetric`).

    Args:
        predict: maps images (m, C_in, H, W, D) to logits (m, C); see :func:`deletion_predictions`.
        images: inputs (N, C_in, H, W, D).
        attribution: maps (N, A, h, w, d) for the ground-truth class.
        labels: ground-truth class indices (N,) or (N, 1), or one-hot (N, C); checked before any forward.
        steps: S deletion steps of 100/S % (S + 1 points).
        batch_size: inputs per forward of ``predict``.
        metric: ``"accuracy"`` (the paper's text) or ``"balanced_accuracy"`` (MProtoNet's tables).
        initial_predictions: class indices (N,) or logits (N, C) of the unmodified images, reused at step 0.
        num_classes: C; defaults to 2.
        order: ``"rank"`` (the paper's text) or ``"quantile"`` (the peers' code); see the module docstring.
        seed: seed of the tie-breaking permutation of the ``"rank"`` order.

    Returns:
        ``(ids, curve)``: IDS in percent and the curve (S + 1,).

    Raises:
        ValueError: see :func:`deletion_predictions` and :func:`deletion_curve`.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8 * 8, 2)).eval()
        >>> images, maps = torch.rand(3, 4, 8, 8, 8), torch.rand(3, 1, 4, 4, 4)
        >>> ids, curve = compute_incremental_deletion(net, images, maps, torch.tensor([0, 1, 1]))
    """
    num_classes = num_classes or DEFAULT_NUM_CLASSES
    labels = as_class_indices(labels, "labels", num_classes)
    images = torch.as_tensor(images)
    if len(labels) != images.shape[0]:
        raise ValueError(f"labels must hold one label per image, got {len(labels)} for {images.shape[0]} images.")
    predictions = deletion_predictions(
        predict, images, attribution, steps, batch_size, initial_predictions, order, seed
    )
    curve = deletion_curve(predictions, labels, metric, num_classes)
    return deletion_score(curve), curve


class IncrementalDeletionMetric(BatchCumulativeMetric):
    """IDS (App. D.4) accumulated over iterations: buffers each case's predictions at every step and its label.

    Called as ``metric(images, labels, attribution)`` (batch-first tensors or lists of channel-first tensors);
    the forwards of a batch run at call time, for both deletion orders at once (the paper's ``"rank"`` and the
    peers' ``"quantile"``, sharing every input they have in common), so only 2 × (B, S + 1) class indices are kept
    per batch. ``aggregate`` computes the set-level curves and scores.

    Args:
        predict: maps images (m, C_in, H, W, D) to logits (m, C), e.g. ``lambda x: net(x).logits``.
        steps: S deletion steps (S + 1 points).
        batch_size: inputs per forward of ``predict``.
        num_classes: C; defaults to 2.
        seed: seed of the tie-breaking permutation of the ``"rank"`` order.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8 * 8, 2)).eval()
        >>> metric = IncrementalDeletionMetric(net, steps=10)
        >>> _ = metric(torch.rand(2, 4, 8, 8, 8), torch.tensor([0, 1]), torch.rand(2, 1, 4, 4, 4))
        >>> sorted(metric.aggregate())
        ['curve', 'curve_bac', 'curve_peer', 'curve_peer_bac', 'ids', 'ids_bac', 'ids_peer', 'ids_peer_bac']
    """

    def __init__(
        self,
        predict: Callable[[torch.Tensor], torch.Tensor],
        steps: int = DEFAULT_STEPS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        num_classes: int | None = None,
        seed: int = DEFAULT_SEED,
    ) -> None:
        super().__init__()
        self.predict = predict
        self.seed = seed
        self.steps = steps
        self.batch_size = batch_size
        self.num_classes = num_classes or DEFAULT_NUM_CLASSES

    def __call__(  # type: ignore[override]
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        attribution: torch.Tensor,
        initial_predictions: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Run the deletion steps of a batch and buffer the step predictions (B, S + 1) of each order and labels (B,).

        Args:
            images: (B, C_in, H, W, D) or a list of (C_in, H, W, D).
            labels: (B,) / (B, 1) / one-hot (B, C), or a list of per-case labels.
            attribution: (B, A, h, w, d) or a list of (A, h, w, d).
            initial_predictions: optional (B,) class indices or (B, C) logits of the unmodified images.
        """
        return super().__call__(images, labels, attribution=attribution, initial_predictions=initial_predictions)

    def _compute_tensor(  # type: ignore[override]
        self,
        y_pred: torch.Tensor,
        y: torch.Tensor | None = None,
        attribution: torch.Tensor | None = None,
        initial_predictions: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """``y_pred`` the images, ``y`` the labels: [rank, quantile predictions (B, S + 1) each, labels (B,)]."""
        if y is None or attribution is None:
            raise ValueError("IncrementalDeletionMetric needs the labels and the attribution maps.")
        labels = as_class_indices(y, "labels", self.num_classes)
        if len(labels) != y_pred.shape[0]:
            raise ValueError(f"labels must hold one label per image, got {len(labels)} for {y_pred.shape[0]} images.")
        steps = deletion_step_predictions(
            self.predict, y_pred, attribution, self.steps, self.batch_size, initial_predictions, seed=self.seed
        )
        return [steps["rank"], steps["quantile"], labels.cpu()]

    def aggregate(self) -> dict[str, float | torch.Tensor]:
        """Set-level curves and scores over the cases accumulated since ``reset()``.

        Returns:
            IDS in percent from the accuracy and the balanced-accuracy curves of the paper's order (``ids``,
            ``ids_bac``, ``curve``, ``curve_bac`` (S + 1,)) and of the peers' quantile order (``ids_peer``,
            ``ids_peer_bac``, ``curve_peer``, ``curve_peer_bac``).
        """
        rank, quantile, labels = self._buffer()
        result: dict[str, float | torch.Tensor] = {}
        for suffix, predictions in (("", rank), ("_peer", quantile)):
            curve = deletion_curve(predictions, labels, "accuracy", self.num_classes)
            curve_bac = deletion_curve(predictions, labels, "balanced_accuracy", self.num_classes)
            result.update({f"ids{suffix}": deletion_score(curve), f"ids{suffix}_bac": deletion_score(curve_bac)})
            result.update({f"curve{suffix}": curve, f"curve{suffix}_bac": curve_bac})
        return result
