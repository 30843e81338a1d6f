"""What :class:`~monai_protoshare.engines.PrototypeTrainer` does between epochs (App. B.1, D.5): per-epoch reseeding,
the parameter groups and module modes of each stage, the stage-3 data source and the record of each push."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch
from monai.data.utils import set_rnd
from torch import nn

from ..explain.evidence import reference_similarities
from ..explain.push import PushResult
from ..io import write_json
from .schedule import Stage
from .similarity_batches import SimilarityBatches

__all__ = [
    "TRAINABLE_GROUPS",
    "classifier_batches",
    "epoch_seed",
    "log_push",
    "reseed",
    "set_stage",
    "write_provenance",
]

logger = logging.getLogger(__name__)

#: parameter groups (``parameter_groups()`` names) each stage trains; everything else gets requires_grad=False
TRAINABLE_GROUPS: dict[Stage, tuple[str, ...]] = {
    Stage.WARMUP: ("encoder", "decoder", "add_ons", "classifier"),  # of the warm-up (CNN) model
    Stage.LATENT: ("encoder", "add_ons", "mapping", "prototypes"),  # "up to and including the prototype bank"
    Stage.CLASSIFIER: ("classifier",),
}


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of ``epoch``: ``(seed * 1_000_003 + epoch) mod 2^31``."""
    return (int(seed) * 1_000_003 + epoch) % (2**31)


def reseed(seed: int, dataset=None) -> None:
    """Seed torch, numpy, ``random`` and the random transforms of ``dataset`` (for ``num_workers=0``; workers are
    seeded from torch's RNG by MONAI's ``worker_init_fn``).

    Called at ``EPOCH_STARTED``, before the data loader creates its iterator, sampler permutation and workers' seeds,
    so an epoch's batches and augmentations are a function of ``(seed, epoch)``: a run resumed from the checkpoint of
    epoch e repeats epoch e + 1 exactly as the uninterrupted run did.
    """
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    if dataset is not None:
        set_rnd(dataset, seed)


def set_stage(network: nn.Module, warmup_model: nn.Module, stage: Stage, frozen_encoder: bool) -> None:
    """``requires_grad_`` exactly the parameter groups of ``stage`` (:data:`TRAINABLE_GROUPS`) and set module modes.

    Warm-up trains the CNN model ``warmup_model`` in train mode; stage 1 runs ``network`` in train mode except the
    frozen decoder and gates, kept in eval mode (their BN statistics stay as warm-up left them), and, with
    ``frozen_encoder`` (FPN-IAIA-BL's stage A), the encoder likewise, which then does not train; stage 3 runs the whole
    network in eval mode (only the classifier learns).
    """
    module = warmup_model if stage == Stage.WARMUP else network
    for p in list(network.parameters()) + list(warmup_model.parameters()):
        p.requires_grad_(False)
    groups = module.parameter_groups()
    trainable = TRAINABLE_GROUPS[stage]
    if frozen_encoder:
        trainable = tuple(name for name in trainable if name != "encoder")
    for name in trainable:
        for p in groups[name]:
            p.requires_grad_(True)
    if stage == Stage.CLASSIFIER:
        network.eval()
        return
    module.train()
    if stage == Stage.LATENT:
        frozen_modules = [network.backbone.decoder, network.backbone.fusions]
        for frozen in frozen_modules + ([network.backbone.encoder] if frozen_encoder else []):
            if frozen is not None:
                frozen.eval()


def classifier_batches(
    network: nn.Module,
    cache: tuple[torch.Tensor, torch.Tensor] | None,
    push_data_loader,
    batch_size: int,
    num_batches: int | None,
) -> tuple[SimilarityBatches, tuple[torch.Tensor, torch.Tensor]]:
    """Stage-3 batches over the push's similarities ``cache`` = (S (N, K_total), labels (N,)), and the cache.

    Without a cache (a run resumed inside a stage-3 block) the similarities are recomputed by one pass over
    ``push_data_loader``; a data loader draws its base seed from torch's generator, so that pass keeps the state the
    epoch was seeded with, or the resumed epoch would shuffle differently from the uninterrupted one.
    """
    if cache is None:
        with torch.random.fork_rng(devices=[]):
            cache = reference_similarities(network, push_data_loader)
    similarities, labels = cache
    return SimilarityBatches(similarities, labels, batch_size, num_batches), cache


def log_push(result: PushResult, epoch: int) -> None:
    """Log one push: distinct source cases, similarity to the chosen descriptor before and after (1.0, eq. 20)."""
    # each prototype's best match among this process's cases after the push: its source case, 1.0 (eq. 20)
    after = result.similarities.max(dim=0).values
    logger.info(
        "push after epoch %d: %d prototypes from %d distinct of %d cases, similarity to the chosen descriptor "
        "before push min %.3f / mean %.3f, best similarity after push min %.6f, %.1f s",
        epoch,
        len(result.subject_ids),
        len(set(result.subject_ids)),
        result.num_cases,
        float(result.similarity_before.min()),
        float(result.similarity_before.mean()),
        float(after.min()),
        result.seconds,
    )


def write_provenance(network: nn.Module, output_dir: str | os.PathLike, epoch: int) -> None:
    """The provenance of every prototype to ``prototypes_epoch<E>.json`` and ``prototypes.json`` in ``output_dir``."""
    record = {"epoch": epoch, "prototypes": network.prototypes.provenance()}
    write_json(os.path.join(output_dir, f"prototypes_epoch{epoch}.json"), record)
    write_json(os.path.join(output_dir, "prototypes.json"), record)
