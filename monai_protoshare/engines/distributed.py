"""Data-parallel training with plain collectives, and an end to a distributed run every rank survives.

The trainer averages gradients itself instead of wrapping modules in ``DistributedDataParallel``. In
torch 2.13 a DDP wrapper keeps its process group referenced from C++ after the wrapper, its module and
``destroy_process_group()`` are gone: gloo's worker and transport threads (``pt_gloo_runloop``,
``gloo_tcp_loop``) then live into interpreter shutdown, where a rank can die with ``terminate called
without an active exception`` (SIGABRT) once its model is written, depending on which rank exits first
(``tests/bundles/test_multi_gpu.py``; pytorch/pytorch#190489 reports the same abort for a group never
destroyed). With plain collectives ``destroy_process_group()`` really frees the group and joins its threads.

What DDP did, done here with the same meaning:

* at the start of training every rank takes rank 0's parameters and buffers (:func:`broadcast_state`);
* before each training forward, rank 0's buffers (BN running statistics) are broadcast
  (DDP's ``broadcast_buffers=True``);
* after backward, gradients are averaged over ranks, ``g = (1/N) sum_r g_r``, in one flattened all-reduce
  per dtype (:func:`average_gradients`); a parameter without a gradient on some ranks counts as zero there
  (DDP's ``find_unused_parameters=True``) and keeps ``grad = None`` if no rank produced one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["average_gradients", "broadcast_buffers", "broadcast_state", "finish_distributed"]

logger = logging.getLogger(__name__)


def broadcast_state(*modules: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers of every module to all ranks (in place)."""
    for module in modules:
        with torch.no_grad():
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src)


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BN running mean/var, counters) to all ranks, as DDP does before a forward."""
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src)


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Replace each parameter's gradient by its mean over ranks.

    Args:
        parameters: the parameters the optimiser steps, in the same order on every rank.

    One all-reduce per dtype carries the flattened gradients and, per parameter, a 1 where this rank has a
    gradient: a parameter no rank produced a gradient for keeps ``grad = None`` (the optimiser skips it).
    """
    by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
    for p in parameters:
        if p.requires_grad:
            by_dtype.setdefault(p.dtype, []).append(p)
    world = dist.get_world_size()
    for params in by_dtype.values():
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        present = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype, device=grads[0].device)
        flat = torch.cat([g.reshape(-1) for g in grads] + [present])
        dist.all_reduce(flat)
        *reduced, counts = flat.split([g.numel() for g in grads] + [len(params)])
        for p, g, count in zip(params, reduced, counts.tolist()):
            if count == 0:
                p.grad = None
            elif p.grad is None:
                p.grad = g.view(p.shape) / world
            else:
                p.grad.copy_(g.view(p.grad.shape)).div_(world)


def finish_distributed(*engines) -> None:
    """End a ``torch.distributed`` run: wait for every rank, then destroy the process group.

    The barrier keeps a rank from tearing its group down while another still runs a collective (the last
    push's gather, a checkpoint on rank 0). Ignite engines are terminated first so that their data loaders'
    background threads stop. Safe to call when no group is initialised (single process).
    """
    for engine in engines:
        close = getattr(getattr(engine, "_dataloader_iter", None), "close", None)
        if close is not None:  # a suspended ThreadDataLoader generator: stop and join its producer thread
            close()
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    dist.destroy_process_group()
    logger.info("process group destroyed")
