"""Stage-3 batches from cached similarities: the classifier trains without another pass over the images."""

from __future__ import annotations

import torch

__all__ = ["SimilarityBatches"]


class SimilarityBatches:
    """Iterable of ``num_batches`` batches ``{"similarities": (b, K), "label": (b,)}`` drawn without replacement
    from a shuffled order (torch's global RNG, reseeded every epoch), wrapping around when needed.

    Stage 3 trains only the bias-free linear classifier on S(x, P) (eq. 21) while everything before it is
    frozen and in eval mode; without augmentation S is a fixed function of each training case, known
    exactly from the push pass. Ten classifier epochs then cost milliseconds instead of ten passes.

    Args:
        similarities: (N, K_total).
        labels: (N,).
        batch_size: cases per batch.
        num_batches: batches per epoch (the trainer's epoch length).
    """

    def __init__(self, similarities: torch.Tensor, labels: torch.Tensor, batch_size: int, num_batches: int) -> None:
        if similarities.shape[0] != labels.shape[0] or similarities.shape[0] == 0:
            raise ValueError(
                f"similarities (N, K) and labels (N,) must describe the same non-empty set of cases; got "
                f"{tuple(similarities.shape)} and {tuple(labels.shape)}."
            )
        self.similarities, self.labels = similarities, labels
        self.batch_size, self.num_batches = int(batch_size), int(num_batches)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        n = self.labels.shape[0]
        needed = self.batch_size * self.num_batches
        order = torch.cat([torch.randperm(n) for _ in range(-(-needed // n))])
        for b in range(self.num_batches):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield {"similarities": self.similarities[idx], "label": self.labels[idx]}
