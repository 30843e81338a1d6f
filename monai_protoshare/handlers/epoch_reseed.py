"""Per-epoch reseeding: epoch e's shuffling and augmentation depend only on (seed, e)."""

from __future__ import annotations

import random

import numpy as np
import torch
from ignite.engine import Events
from monai.data.utils import set_rnd

__all__ = ["EpochReseedHandler"]


class EpochReseedHandler:
    """At ``EPOCH_STARTED`` reseed torch, numpy, ``random`` and the random transforms of the data loader's dataset.

    The data loader's iterator, its sampler permutation and its workers' seeds are created after
    ``EPOCH_STARTED``, so an epoch's batches and augmentations are a function of ``(seed, epoch)``: a run
    resumed from the checkpoint of epoch e repeats epoch e + 1 exactly as the uninterrupted run did.

    Args:
        seed: base seed.
        data_loader: the training loader whose ``dataset`` transforms are reseeded (for ``num_workers=0``;
            workers are seeded from torch's RNG by MONAI's ``worker_init_fn``).
    """

    def __init__(self, seed: int = 0, data_loader=None) -> None:
        self.seed = int(seed)
        self.dataset = getattr(data_loader, "dataset", None)

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def epoch_seed(self, epoch: int) -> int:
        return (self.seed * 1_000_003 + epoch) % (2**31)

    def __call__(self, engine) -> None:
        seed = self.epoch_seed(engine.state.epoch)
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        if self.dataset is not None:
            set_rnd(self.dataset, seed)
