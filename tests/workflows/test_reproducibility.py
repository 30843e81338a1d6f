"""Same command, same numbers (issue 20): a shortened bundle run repeated in two fresh processes is bit-equal.

Each process trains UM-ProtoShare on the tiny bundle cohort (augmentation, push, stage 3) and evaluates it; the
two runs' weights must be equal tensor for tensor and their ``metrics.json`` and ``predictions.csv`` byte for byte.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.bundles.conftest import TINY

REPO = Path(__file__).resolve().parents[2]
RUN = """
import json, sys
from monai_protoshare.workflows.demo import DEFAULT_BUNDLES_DIR, bundle_workflow
values = json.loads(sys.argv[1])
for configs in (["train.yaml"], ["train.yaml", "evaluate.yaml"]):
    workflow = bundle_workflow(DEFAULT_BUNDLES_DIR / "um_protoshare", configs, **values)
    workflow.run()
    workflow.finalize()
"""


def _run(dataset_dir: Path, output_dir: Path) -> Path:
    values = {**TINY, "dataset_dir": str(dataset_dir), "output_dir": str(output_dir), "fold": 0}
    values["validate#additional_metrics#ids#steps"] = 10  # deletion curves of 11 points keep the test short
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", RUN, json.dumps(values)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir / "fold0"


@pytest.mark.slow
def test_two_fresh_processes_give_bit_equal_weights_and_metrics(bundle_cohort, tmp_path):
    first, second = _run(bundle_cohort, tmp_path / "a"), _run(bundle_cohort, tmp_path / "b")
    for name in ("metrics.json", "predictions.csv"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    a = torch.load(first / "checkpoints" / "model.pt", weights_only=True)
    b = torch.load(second / "checkpoints" / "model.pt", weights_only=True)
    assert set(a) == set(b) and not [k for k in a if not torch.equal(a[k], b[k])]
    metrics = json.loads((first / "metrics.json").read_text())
    assert metrics["n"] == 2 and "ap_by_class_map" in metrics  # a real evaluation, not an empty file
