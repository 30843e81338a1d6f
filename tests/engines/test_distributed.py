"""Data-parallel collectives of the trainer and the end of a distributed run (two gloo processes on CPU).

Regression: with DistributedDataParallel, gloo's threads outlived ``destroy_process_group()`` and a rank could
abort at exit (SIGABRT, "terminate called without an active exception") depending on which rank exited first. Every
rank must now end with no gloo thread and no loader thread alive (so no exit order can race), and exit 0.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.engines.distributed_cases import batch_of, tiny_network

REPO = Path(__file__).resolve().parents[2]


def expected_gradients() -> list[torch.Tensor]:
    """The mean over ranks 0 and 1 of each rank's gradients, from rank 0's initial weights."""
    per_rank = []
    for rank in (0, 1):
        torch.manual_seed(0)
        network = tiny_network()
        network(batch_of(rank)).square().mean().backward()
        per_rank.append([p.grad for p in network.parameters()])
    return [(a + b) / 2 for a, b in zip(*per_rank)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads thread names from /proc")
def test_two_ranks_average_gradients_and_exit_cleanly(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
         str(REPO / "tests" / "engines" / "distributed_worker.py"), str(tmp_path), "1"],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert "terminate called" not in result.stderr
    expected = expected_gradients()
    for rank in (0, 1):
        out = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for got, want in zip(out["grads"], expected):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        assert out["unused_grads"] == [None, None]
        assert torch.equal(out["running_mean_before_forward"], torch.zeros(4))  # rank 0's statistics
        assert not out["initialized"]
        assert not [name for name in out["native_threads"] if "gloo" in name], out["native_threads"]
        assert out["python_threads"] == ["MainThread"]
