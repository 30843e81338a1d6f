"""Fixtures for the network tests: cpu_small models cached per test module."""

from __future__ import annotations

import pytest
import torch
from network_cases import build


class _ModelCache(dict):
    def __missing__(self, name: str) -> torch.nn.Module:
        self[name] = build(name).eval()
        return self[name]


@pytest.fixture(scope="module")
def cpu_small_models() -> dict[str, torch.nn.Module]:
    """cpu_small models in eval mode, built on first use and shared within a test module (never modify one)."""
    return _ModelCache()
