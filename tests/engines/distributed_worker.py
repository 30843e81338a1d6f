"""One rank of ``test_distributed.py``: steps with the trainer's collectives, then ``finish_distributed``.

Usage: ``torchrun --nproc_per_node=2 distributed_worker.py OUT_DIR LAST_RANK`` (``LAST_RANK`` exits 0.5 s after
the others, so each exit order of the ranks is exercised).
"""

import os
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from monai.data import ThreadDataLoader
from torch import nn

from monai_protoshare.engines.distributed import (
    average_gradients,
    broadcast_buffers,
    broadcast_state,
    finish_distributed,
)
from tests.engines.distributed_cases import batch_of, tiny_network


def native_threads() -> list[str]:
    return sorted(Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task"))


def main(out_dir: Path, last_rank: int) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(rank)  # each rank starts from other weights: broadcast_state must make them rank 0's
    network, unused = tiny_network(), nn.Linear(2, 2)  # `unused` gets no gradient on any rank
    with torch.no_grad():
        network[1].running_mean.fill_(float(rank))  # rank 0's statistics must win the buffer broadcast
    broadcast_state(network, unused)
    broadcast_buffers(network)
    running_mean = network[1].running_mean.clone()
    network(batch_of(rank)).square().mean().backward()
    average_gradients([*network.parameters(), *unused.parameters()])
    # an Ignite engine stopped mid-epoch: its ThreadDataLoader generator is suspended, its producer thread alive
    loader_iter = iter(ThreadDataLoader(list(range(8)), batch_size=1, buffer_size=1))
    next(loader_iter)
    finish_distributed(SimpleNamespace(_dataloader_iter=loader_iter))
    torch.save(
        {
            "grads": [p.grad for p in network.parameters()],
            "unused_grads": [p.grad for p in unused.parameters()],
            "running_mean_before_forward": running_mean,
            "native_threads": native_threads(),
            "python_threads": [t.name for t in threading.enumerate()],
            "initialized": dist.is_initialized(),
        },
        out_dir / f"rank{rank}.pt",
    )
    if rank == last_rank:
        time.sleep(0.5)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
