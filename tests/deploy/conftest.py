"""Fixtures of the end-to-end tests of the MONAI Deploy and MONAI Label apps (issue 9 item 4).

These tests run in deploy/.venv-deploy and deploy/.venv-label (``bash deploy/ci.sh``); each module skips itself
where its SDK is not importable, so the core ``make test`` runs none of them.

The bundle under test is a copy of ``bundles/um_protoshare`` with a tiny untrained network (sizes overridden in
its inference.yaml) saved as ``models/model.pt``: the tests check the plumbing (inputs, geometry, outputs),
not the model's accuracy.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "deploy"))  # app_bundle.py
#: Tiny-model sizes written into the bundle copy (the network accepts a 32 x 32 x 24 input).
TINY = {
    "spatial_size": [32, 32, 24],
    "pixdim": 6.0,
    "encoder_layers": [1, 1],
    "encoder_widths": [4, 8],
    "embedding_dim": 8,
    "num_workers": 0,
}


def make_tiny_bundle(destination: Path, seed: int = 0) -> Path:
    """The app bundle (``deploy/app_bundle.py``) of the UM-ProtoShare bundle with :data:`TINY` sizes and seeded
    random weights, at ``destination``."""
    from app_bundle import make_app_bundle

    from monai_protoshare.networks import build_network

    torch.manual_seed(seed)
    network = build_network(
        "um_protoshare",
        encoder_layers=TINY["encoder_layers"],
        encoder_widths=TINY["encoder_widths"],
        embedding_dim=TINY["embedding_dim"],
    )
    weights = destination.parent / "tiny_weights.pt"
    torch.save(network.state_dict(), weights)
    return make_app_bundle(destination, weights, overrides=TINY)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "um_protoshare")


@pytest.fixture(scope="session")
def nifti_cohort(tmp_path_factory) -> Path:
    """Two synthetic BraTS-layout cases at 6 mm (40 x 40 x 26 voxels)."""
    from monai_protoshare.data.synthetic import generate_cohort

    return generate_cohort(tmp_path_factory.mktemp("cohort"), n_cases=2, seed=0, spacing=6.0, progress=False)
