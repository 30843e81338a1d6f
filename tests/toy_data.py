"""Tiny in-memory cases for engine and handler tests: (4, 16, 16, 8) volumes whose grade is a T1-CE blob."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

SPATIAL = (16, 16, 8)
TINY_NET = {"encoder_layers": (1, 1), "encoder_widths": (4, 8), "embedding_dim": 8}


class ToyCases(Dataset):
    """HGG cases (label 1) carry a bright T1-CE cube; LGG cases (label 0) a bright FLAIR cube."""

    def __init__(self, n: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = 0.3 * torch.randn(n, 4, *SPATIAL, generator=g)
        self.labels = torch.arange(n) % 2
        for i in range(n):
            x0 = int(torch.randint(2, 8, (1,), generator=g))
            channel = 1 if self.labels[i] else 3
            self.images[i, channel, x0 : x0 + 6, 4:10, 2:6] += 2.0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i], "subject_id": f"toy{i:03d}"}
