"""Switches parameter groups, module modes and the forward function at each stage change (App. B.1, D.5)."""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from ignite.engine import Events

from ..engines.schedule import Stage
from ..engines.similarity_batches import SimilarityBatches
from ..explain.evidence import reference_similarities

__all__ = ["TRAINABLE_GROUPS", "TrainingStageHandler"]

logger = logging.getLogger(__name__)

#: parameter groups (``parameter_groups()`` names) each stage trains; everything else gets requires_grad=False
TRAINABLE_GROUPS: dict[Stage, tuple[str, ...]] = {
    Stage.WARMUP: ("encoder", "decoder", "add_ons", "classifier"),  # of the warm-up (CNN) model
    Stage.LATENT: ("encoder", "add_ons", "mapping", "prototypes"),  # "up to and including the prototype bank"
    Stage.CLASSIFIER: ("classifier",),
}


class TrainingStageHandler:
    """At every ``EPOCH_STARTED`` of a :class:`~monai_protoshare.engines.PrototypeTrainer`: set
    ``engine.state.stage`` from the schedule, ``requires_grad_`` exactly the stage's parameter groups
    (:data:`TRAINABLE_GROUPS`), put modules in the right mode, and choose ``engine.forward_module``.

    Modes: warm-up trains the CNN model in train mode; stage 1 runs the network in train mode except the
    frozen decoder and gates, kept in eval mode (their BN statistics stay as warm-up left them), and the encoder
    during the trainer's ``frozen_encoder_epochs`` (FPN-IAIA-BL's stage A) likewise; stage 3
    runs the whole network in eval mode (only the classifier learns). Under ``torch.distributed`` the
    trainer averages the gradients itself (:mod:`monai_protoshare.engines.distributed`). With ``classifier_inputs="cached"`` stage-3 epochs iterate over the similarities the push computed
    (:class:`SimilarityBatches`; recomputed by one pass when a run resumes inside a stage-3 block).
    """

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine) -> None:
        stage = engine.schedule.stage(engine.state.epoch)
        if stage != engine.state.stage:
            logger.info("epoch %d: stage %s", engine.state.epoch, stage.value)
        engine.state.stage = stage
        module = engine.module_for(stage)
        network = engine.network
        for p in list(network.parameters()) + list(engine.warmup_model.parameters()):
            p.requires_grad_(False)
        groups = module.parameter_groups()
        trainable = TRAINABLE_GROUPS[stage]
        frozen_encoder = stage == Stage.LATENT and (
            engine.schedule.latent_epoch_index(engine.state.epoch) < engine.frozen_encoder_epochs
        )
        if frozen_encoder:  # FPN-IAIA-BL's stage A
            trainable = tuple(name for name in trainable if name != "encoder")
        for name in trainable:
            for p in groups[name]:
                p.requires_grad_(True)
        if stage == Stage.CLASSIFIER:
            network.eval()
        else:
            module.train()
            if stage == Stage.LATENT:
                frozen_modules = [network.backbone.decoder, network.backbone.fusions]
                for frozen in frozen_modules + ([network.backbone.encoder] if frozen_encoder else []):
                    if frozen is not None:
                        frozen.eval()
        forward = module if stage == Stage.WARMUP else network.explain
        engine.forward_module = forward
        self._select_data(engine, stage)
        engine.state.lr = engine.optimizer_for(stage).param_groups[0]["lr"]
        engine.state.rank = dist.get_rank() if engine.distributed else 0

    @staticmethod
    def _select_data(engine, stage: Stage) -> None:
        cached = isinstance(engine.state.dataloader, SimilarityBatches)
        if stage == Stage.LATENT:
            engine.classifier_cache = None  # the next push replaces the prototypes
        if stage != Stage.CLASSIFIER or engine.classifier_inputs != "cached":
            if cached:
                engine.set_data(engine.data_loader)
            return
        if cached:
            return
        if engine.classifier_cache is None:  # resumed inside a stage-3 block
            # a data loader draws its base seed from torch's generator: keep the state the epoch was seeded with,
            # or the resumed epoch would shuffle differently from the uninterrupted one
            with torch.random.fork_rng(devices=[]):
                engine.classifier_cache = reference_similarities(engine.network, engine.push_data_loader)
        similarities, labels = engine.classifier_cache
        batch_size = getattr(engine.data_loader, "batch_size", None) or 1
        engine.set_data(SimilarityBatches(similarities, labels, batch_size, engine.state.epoch_length))
