"""Deletion steps of the incremental deletion score (App. D.4; DESIGN §8): which voxels go at each step, and the
predicted class of every case at every step.

At step k = 0..S voxels of the upsampled, channel-averaged attribution map are set to 0 in every sequence, the
most attributed first, in one of two orders (:data:`DELETION_ORDERS`, described in
:mod:`monai_protoshare.metrics.incremental_deletion`, which turns these predictions into curves and scores).

Cost: both orders delete a prefix of the same tie-broken ranking (a quantile's tie groups are whole), so a step is
fully described by its number of deleted voxels. The inputs of every distinct count of every case go through
``predict`` once, in batches built in place in one buffer, whichever orders and steps share it; the all-zero input
is forwarded once for the whole set, and step 0 reuses the caller's predictions when given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from monai.utils import look_up_option

from monai_protoshare.metrics.utils import check_finite, predicted_classes, resize_attribution

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_SEED",
    "DEFAULT_STEPS",
    "DELETION_ORDERS",
    "deletion_counts",
    "deletion_predictions",
    "deletion_ranks",
    "deletion_step_predictions",
]

#: 50 steps of 2 % (App. D.4).
DEFAULT_STEPS = 50
#: Deleted inputs per forward of ``predict``.
DEFAULT_BATCH_SIZE = 8
#: Deletion orders: the paper's fixed fraction per step (default), the peers' quantile thresholds.
DELETION_ORDERS = ("rank", "quantile")
#: Seed of the permutation that breaks ties in the ``"rank"`` order.
DEFAULT_SEED = 0


def _check_inputs(images: torch.Tensor, attribution: torch.Tensor) -> None:
    """Raise a ``ValueError`` unless images (N, C, H, W, D) and maps (N, A, h, w, d) fit, N > 0, maps finite."""
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
    images: torch.Tensor,
    attribution: torch.Tensor,
    steps: int,
    orders: Sequence[str],
    seed: int,
    counts: list[list[list[int]]],
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
    by_count = _initial_classes(initial_predictions, n)
    batches = _DeletionBatches(predict, images, batch_size, min(batch_size, n * (steps + 1) + 1), by_count)
    counts: list[list[list[int]]] = []  # case -> order -> the S + 1 deleted counts
    with torch.no_grad():
        for i, c, keep in _deletion_jobs(images, attribution, steps, orders, seed, counts):
            if (i, c) not in by_count:  # step 0 given by the caller
                batches.add(i, c, keep)
        if any(num_voxels in order_counts for case_counts in counts for order_counts in case_counts):
            batches.add(-1, num_voxels, None)
        if batches.pending:
            batches.flush()
    return {
        order: torch.tensor(
            [[by_count[(-1 if c == num_voxels else i, c)] for c in counts[i][j]] for i in range(n)], dtype=torch.long
        )
        for j, order in enumerate(orders)
    }


def _initial_classes(initial_predictions: torch.Tensor | None, n: int) -> dict[tuple[int, int], int]:
    """``{(case, 0): class}`` from the caller's predictions of the unmodified images, or ``{}`` without them."""
    if initial_predictions is None:
        return {}
    initial, _ = predicted_classes(torch.as_tensor(initial_predictions), "initial_predictions")
    if len(initial) != n:
        raise ValueError(f"initial_predictions must hold {n} cases (one per image), got {len(initial)}.")
    return {(i, 0): c for i, c in enumerate(initial.tolist())}


class _DeletionBatches:
    """The deleted inputs of :func:`deletion_step_predictions`, built in place one batch at a time (never all
    S + 1 copies of a volume at once) and forwarded through ``predict`` whenever ``batch_size`` are pending.

    Args:
        predict: images (m, C_in, H, W, D) -> logits (m, C).
        images: the unmodified inputs (N, C_in, H, W, D).
        batch_size: inputs per forward.
        capacity: rows of the reusable buffer (at most ``batch_size``).
        by_count: ``{(case, deleted count): class}``, filled in place; case -1 is the all-zero input.
    """

    def __init__(
        self,
        predict: Callable[[torch.Tensor], torch.Tensor],
        images: torch.Tensor,
        batch_size: int,
        capacity: int,
        by_count: dict[tuple[int, int], int],
    ) -> None:
        self.predict, self.images, self.batch_size, self.by_count = predict, images, batch_size, by_count
        self.buffer = images.new_empty((capacity, *images.shape[1:]))
        self.pending: list[tuple[int, int]] = []

    def add(self, i: int, c: int, keep: torch.Tensor | None) -> None:
        """Queue case ``i`` with ``c`` voxels deleted: ``images[i] * keep``, the image itself (``keep`` None), or
        zeros (``i`` = -1); forward the batch when it is full."""
        slot = self.buffer[len(self.pending)]
        if i < 0:
            slot.zero_()
        elif keep is None:
            slot.copy_(self.images[i])
        else:
            torch.mul(self.images[i], keep, out=slot)
        self.pending.append((i, c))
        if len(self.pending) == self.batch_size:
            self.flush()

    def flush(self) -> None:
        """Forward the pending inputs and record their predicted classes."""
        logits = self.predict(self.buffer[: len(self.pending)])
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != len(self.pending):
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"predict must return logits (m, C) for m = {len(self.pending)} inputs; got {got}.")
        self.by_count.update(zip(self.pending, logits.argmax(dim=1).tolist(), strict=True))
        self.pending.clear()


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
