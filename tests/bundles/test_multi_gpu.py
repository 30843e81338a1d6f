"""multi_gpu_train.yaml with two gloo processes on CPU: both ranks finish with identical prototypes and exit 0."""

import json
import os
import subprocess
import sys

import torch

from tests.bundles.conftest import BUNDLES_DIR, tiny_overrides


def test_two_process_gloo_training(bundle_cohort, tmp_path):
    root = BUNDLES_DIR / "um_protoshare"
    overrides = {
        **tiny_overrides("um_protoshare"),
        "dataset_dir": str(bundle_cohort),
        "output_dir": str(tmp_path),
        "model_path": "$None",  # the command line cannot pass None: "$None" evaluates to it
        "fold": 0,
    }
    args = []
    for key, value in overrides.items():
        args += [f"--{key}", json.dumps(value) if isinstance(value, list) else str(value)]
    # each rank saves its final prototypes for the comparison; the bundle's own `finalize` ends the run
    args += [
        "--run#0",
        "$[@train#trainer.run(), torch.save(@network.prototypes.state_dict(), os.path.join(@fold_dir, f'rank{dist.get_rank()}.pt'))]",
    ]
    configs = str([str(root / "configs" / "train.yaml"), str(root / "configs" / "multi_gpu_train.yaml")])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
         "-m", "monai.bundle", "run", "--config_file", configs, "--bundle_root", str(root), *args],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    fold = tmp_path / "fold0"
    rank0 = torch.load(fold / "rank0.pt", weights_only=True)
    rank1 = torch.load(fold / "rank1.pt", weights_only=True)
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0, msg=key)
    assert (fold / "checkpoints" / "model.pt").is_file() and (fold / "prototypes.json").is_file()
