"""A tiny synthetic cohort and tiny bundle overrides shared by the bundle tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from monai_protoshare.data.synthetic import generate_cohort

BUNDLES_DIR = Path(__file__).resolve().parents[2] / "bundles"
BUNDLES = ("um_protoshare", "mprotonet", "maprotonet", "xprotonet", "protopnet", "cnn")

#: overrides that shrink every bundle to seconds: 16x16x8 voxels of 12 mm, widths 4/8, E = 8, 2 epochs a stage
TINY = {
    "spatial_size": [16, 16, 8],
    "pixdim": 12.0,
    "encoder_layers": [1, 1],
    "encoder_widths": [4, 8],
    "embedding_dim": 8,
    "batch_size": 4,
    "warmup_epochs": 2,
    "latent_epochs": 2,
    "push_interval": 2,
    "classifier_epochs": 2,
    "lr_warmup_epochs": 1,
    "num_workers": 0,
    "validate#dataloader#num_workers": 0,
    # Training writes no <bundle_root>/models/model.pt: bundle_root is the repository's bundle folder here (the
    # round trip through models/model.pt runs on a bundle copy, test_model_zoo.py).
    "model_path": None,
}


def tiny_overrides(bundle: str) -> dict:
    overrides = dict(TINY)
    if bundle == "maprotonet":
        overrides.update(encoder_layers=[1], encoder_widths=[4])
    if bundle == "cnn":
        overrides["latent_epochs"] = 0
    return overrides


@pytest.fixture(scope="session")
def bundle_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten cases at 6 mm, half of each grade: every fold holds out one LGG and one HGG case."""
    return generate_cohort(
        tmp_path_factory.mktemp("bundle_cohort"), n_cases=10, seed=1, spacing=6.0, lgg_fraction=0.5, progress=False
    )


def run_two_gloo_ranks(root: Path, overrides: dict, run: tuple[str, str], timeout: float = 900):
    """``torchrun`` two CPU ranks (gloo, one thread each) of ``train.yaml`` + ``multi_gpu_train.yaml`` of the bundle
    at ``root`` with ``overrides`` on the command line (lists as JSON, ``None`` as MONAI's ``$None``: a plain
    ``None`` would not reach the config) and ``run = (id, expression)`` replacing one entry of its ``run`` list."""
    import json
    import os
    import subprocess
    import sys

    args = []
    for key, value in {**overrides, run[0]: run[1]}.items():
        args += [f"--{key}", json.dumps(value) if isinstance(value, list) else "$None" if value is None else str(value)]
    configs = str([str(root / "configs" / "train.yaml"), str(root / "configs" / "multi_gpu_train.yaml")])
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
         "-m", "monai.bundle", "run", "--config_file", configs, "--bundle_root", str(root), *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
