"""Shared test set-up: one thread per test worker (``make test`` runs two workers on two cores), and no test
writes weights into the repository's bundles."""

import os
import time
from pathlib import Path

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

_BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


@pytest.fixture(scope="session", autouse=True)
def no_weights_written_into_the_repository():
    """A test that trains a real bundle must relocate its weights (``model_path: None`` or a temporary path): the
    default ``bundles/<b>/models/model.pt`` is the user's, and the deploy apps would pick up a test's tiny weights."""
    start = time.time()
    yield
    written = [p for p in _BUNDLES.glob("*/models/*") if p.stat().st_mtime >= start]
    assert not written, f"tests wrote into the repository's bundles: {[str(p) for p in written]}"
