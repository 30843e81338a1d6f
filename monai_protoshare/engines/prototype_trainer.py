"""The three-stage trainer (paper §2.3, App. B.1, D.5): warm-up, latent space, push, classifier."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from ignite.engine import Events
from monai.engines import Trainer
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.optimizers import WarmupCosineSchedule
from monai.utils import CommonKeys, look_up_option
from torch import nn

from ..explain.push import push_prototypes
from ..losses import ClassifierStageLoss, LatentSpaceLoss
from ..networks import CNNClassifier
from .distributed import average_gradients, broadcast_buffers, broadcast_state
from .schedule import Stage, TrainingSchedule
from .similarity_batches import SimilarityBatches
from .stages import classifier_batches, epoch_seed, log_push, reseed, set_stage, write_provenance

__all__ = ["PrototypeTrainer", "loss_terms"]

logger = logging.getLogger(__name__)

LOSS_TERMS = ("loss", "cls", "clst", "sep", "map", "oc", "div", "ortho", "fine", "l1")


def loss_terms(output: dict | None) -> dict[str, float]:
    """The loss terms of an iteration's output, for StatsHandler/TensorBoardStatsHandler ``output_transform``."""
    return {k: output[k] for k in LOSS_TERMS if output and k in output}


def _check_arguments(
    schedule: TrainingSchedule,
    max_epochs: int | None,
    is_cnn: bool,
    mask_shift_lr_factor: float,
    frozen_encoder_epochs: int,
    push_data_loader: Any,
) -> None:
    """:class:`PrototypeTrainer`'s argument checks, each a ``ValueError`` naming the argument."""
    total = schedule.total_epochs
    if max_epochs is not None and int(max_epochs) != total:
        raise ValueError(
            f"max_epochs={max_epochs} disagrees with the schedule's total of {total} epochs "
            f"({schedule}); change the schedule's epoch counts instead."
        )
    if is_cnn and schedule.latent_epochs:
        raise ValueError(
            "a CNNClassifier has no prototypes: its schedule must have latent_epochs=0 "
            f"(only warm-up epochs); got {schedule}."
        )
    if mask_shift_lr_factor <= 0:
        raise ValueError(f"mask_shift_lr_factor multiplies latent_lr and must be positive; got {mask_shift_lr_factor}.")
    if not 0 <= int(frozen_encoder_epochs) <= schedule.latent_epochs:
        raise ValueError(
            f"frozen_encoder_epochs must be within 0..latent_epochs={schedule.latent_epochs}; "
            f"got {frozen_encoder_epochs}."
        )
    if schedule.latent_epochs and push_data_loader is None:
        raise ValueError("push_data_loader (the un-augmented training fold) is required for the push.")


def _latent_parameter_groups(
    network: nn.Module, latent_lr: float, mask_shift_lr_factor: float = 1.0
) -> list[dict[str, Any]]:
    """Stage-1 AdamW parameter groups (App. D.5): encoder, add-ons and mapping modules with the optimiser's weight
    decay, prototypes without; with ``mask_shift_lr_factor`` other than 1 the mapping modules' last BN shifts
    (:meth:`PrototypeNetwork.mask_shift_parameters`) form a third group at ``latent_lr * mask_shift_lr_factor``
    without weight decay."""
    groups = network.parameter_groups()
    shifts = network.mask_shift_parameters() if mask_shift_lr_factor != 1.0 else []
    separate = {id(p) for p in shifts}
    latent_groups = [
        {"params": [p for p in groups["encoder"] + groups["add_ons"] + groups["mapping"] if id(p) not in separate]},
        {"params": groups["prototypes"], "weight_decay": 0.0},
    ]
    if shifts:
        latent_groups.append({"params": shifts, "lr": latent_lr * mask_shift_lr_factor, "weight_decay": 0.0})
    return latent_groups


class PrototypeTrainer(Trainer):
    """Trains a prototype network through the schedule of App. D.5 as one Ignite run of ``schedule.total_epochs``.

    Every epoch belongs to one :class:`Stage`:

    - ``WARMUP``: the CNN model sharing the network's backbone and add-ons
      (:meth:`CNNClassifier.sharing`): encoder, decoder, gates and add-ons trained with cross-entropy,
      AdamW (``warmup_lr``, ``warmup_weight_decay``).
    - ``LATENT`` (stage 1): :class:`LatentSpaceLoss` (eq. 19); decoder and gates frozen (their BN in eval
      mode, so they really stay as warm-up left them), classifier frozen; AdamW over encoder, add-ons,
      mapping modules (weight decay ``latent_weight_decay``) and prototypes (no weight decay);
      ``WarmupCosineSchedule`` stepped once per latent epoch (``lr_warmup_epochs`` of ``latent_epochs``).
    - push (stage 2, eq. 20) after each block of latent epochs: :func:`~monai_protoshare.explain.push.push_prototypes`;
      ``state.push_result`` holds the :class:`~monai_protoshare.explain.push.PushResult`.
    - ``CLASSIFIER`` (stage 3): :class:`ClassifierStageLoss` (eq. 21), Adam on the classifier only; the
      rest of the network runs in eval mode without gradients (only the last layer is trained, so BN
      statistics must not drift and no activation needs to be kept).

    A :class:`CNNClassifier` network (the CNN baseline) is trained with warm-up epochs only.

    The trainer owns the loop between epochs (:mod:`~monai_protoshare.engines.stages`): at ``EPOCH_STARTED`` it
    reseeds (so a resumed run repeats exactly the epoch it lost), then sets ``state.stage``, the trainable parameter
    groups, module modes, forward function and data source of the epoch's stage; at ``EPOCH_COMPLETED`` it steps the
    LR schedule, then pushes. These run before ``train_handlers``, so a checkpoint saved by a user handler at
    ``EPOCH_COMPLETED`` always includes the push of that epoch. Handlers react to ``state`` (``stage``, ``lr``,
    ``rank``, ``push_result``, ``push_seconds``) and to MONAI's ``IterationEvents`` fired in :meth:`_iteration`.

    Args:
        device: training device; the network and the warm-up GAP head are moved to it.
        network: a :class:`PrototypeNetwork` or :class:`CNNClassifier`.
        train_data_loader: augmented training batches with ``image`` (B, 4, H, W, D) and ``label`` (B,).
        schedule: the :class:`TrainingSchedule`; ``max_epochs`` defaults to its ``total_epochs``.
        push_data_loader: un-augmented training fold for the push (required when the schedule has
            latent epochs).
        latent_loss, classifier_loss: stage losses (default: the paper's coefficients).
        warmup_lr, warmup_weight_decay, latent_lr, latent_weight_decay, lr_warmup_epochs,
        lr_warmup_multiplier, classifier_lr: optimiser settings of App. D.5.
        mask_shift_lr_factor: stage-1 learning rate of the mapping modules' last BN shifts
            (:meth:`PrototypeNetwork.mask_shift_parameters`, which set how much of the volume each prototype map
            covers) as a multiple of ``latent_lr``; with a factor other than 1 they also get no weight decay.
            Adam moves a parameter by about its learning rate per step, so a short schedule leaves the maps as
            wide as they started; the paper trains everything at one rate (1, the default).
        classifier_inputs: stage-3 inputs: ``"augmented"`` (a frozen, eval-mode forward of the augmented
            training batches every epoch, as MProtoNet trains its last layer) or ``"cached"`` (the
            similarities of the un-augmented training fold that the push already computed: stage 3 becomes a
            logistic regression on fixed inputs and costs no forward pass; :class:`SimilarityBatches`).
        frozen_encoder_epochs: the first N stage-1 epochs keep the encoder frozen, in eval mode (FPN-IAIA-BL's
            stage A, §4: "freeze the backbone to warm up all the other layers"); 0 for the other models.
        seed: base seed of the per-epoch reseeding.
        push_output_dir: where the push writes its provenance JSON (optional).
        distributed: when a process group is initialised, start from rank 0's weights, broadcast its buffers
            before each forward and average gradients over ranks (:mod:`~monai_protoshare.engines.distributed`).
        channels_last: keep the network and the images in ``torch.channels_last_3d`` memory format; oneDNN's
            3D convolutions (the stem's weight gradient above all) run about 1.5x faster so on CPU.
        amp: bf16 autocast (CUDA only).
        train_handlers: MONAI/Ignite handlers attached after the built-in ones.
        key_train_metric, additional_metrics: Ignite metrics on ``{"pred", "label"}`` outputs.
    """

    def __init__(
        self,
        device: torch.device | str,
        network: nn.Module,
        train_data_loader: Iterable[Any],
        schedule: TrainingSchedule,
        push_data_loader: Iterable[Any] | None = None,
        latent_loss: nn.Module | None = None,
        classifier_loss: nn.Module | None = None,
        max_epochs: int | None = None,
        warmup_lr: float = 1e-3,
        warmup_weight_decay: float = 1e-2,
        latent_lr: float = 1e-3,
        latent_weight_decay: float = 1e-2,
        lr_warmup_epochs: int = 20,
        lr_warmup_multiplier: float = 0.05,
        classifier_lr: float = 1e-3,
        mask_shift_lr_factor: float = 1.0,
        classifier_inputs: str = "augmented",
        frozen_encoder_epochs: int = 0,
        seed: int = 0,
        push_output_dir: str | None = None,
        distributed: bool = False,
        channels_last: bool = True,
        amp: bool = False,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        train_handlers: Sequence | None = None,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        epoch_length: int | None = None,
    ) -> None:
        is_cnn = isinstance(network, CNNClassifier)
        _check_arguments(schedule, max_epochs, is_cnn, mask_shift_lr_factor, frozen_encoder_epochs, push_data_loader)
        use_amp = bool(amp) and torch.device(device).type == "cuda"
        super().__init__(
            device=device,
            max_epochs=schedule.total_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            amp=use_amp,
            decollate=False,
        )
        self.network = network
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        self.schedule = schedule
        self.frozen_encoder_epochs = int(frozen_encoder_epochs)
        self.warmup_model = network if is_cnn else CNNClassifier.sharing(network)
        # the warm-up model's GAP head is created here, so the caller cannot have moved it with the network
        network.to(device=self.state.device, memory_format=self.memory_format)
        self.warmup_model.to(device=self.state.device, memory_format=self.memory_format)
        self.latent_loss = latent_loss if latent_loss is not None else LatentSpaceLoss()
        self.classifier_loss = classifier_loss if classifier_loss is not None else ClassifierStageLoss()
        self.distributed = bool(distributed) and dist.is_available() and dist.is_initialized()
        self.classifier_inputs = look_up_option(classifier_inputs, ("augmented", "cached"))
        self.push_data_loader = push_data_loader
        self.push_output_dir = push_output_dir
        self.seed = int(seed)
        self.reseeded_dataset = getattr(train_data_loader, "dataset", None)
        self.classifier_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self.forward_module: Callable | None = None
        self.state.stage = None
        self.state.lr = None
        self.state.push_result = None

        groups = self.warmup_model.parameter_groups()
        self.warmup_optimizer = torch.optim.AdamW(
            [p for g in groups.values() for p in g], lr=warmup_lr, weight_decay=warmup_weight_decay
        )
        self.latent_optimizer = self.latent_scheduler = self.classifier_optimizer = None
        if not is_cnn:
            self.latent_optimizer = torch.optim.AdamW(
                _latent_parameter_groups(network, latent_lr, mask_shift_lr_factor),
                lr=latent_lr,
                weight_decay=latent_weight_decay,
            )
            self.latent_scheduler = WarmupCosineSchedule(
                self.latent_optimizer,
                warmup_steps=lr_warmup_epochs,
                t_total=max(schedule.latent_epochs, 1),
                warmup_multiplier=lr_warmup_multiplier,
            )
            self.classifier_optimizer = torch.optim.Adam(network.parameter_groups()["classifier"], lr=classifier_lr)
        self._attach_own_handlers()
        if train_handlers is not None:
            self._register_handlers(train_handlers)

    def _attach_own_handlers(self) -> None:
        """The trainer's own steps, attached before the user's handlers so that checkpoints follow the push."""
        self.add_event_handler(Events.EPOCH_STARTED, self._reseed)
        if self.distributed:
            self.add_event_handler(Events.STARTED, lambda _: broadcast_state(self.network, self.warmup_model))
        self.add_event_handler(Events.EPOCH_STARTED, self._start_stage)
        if self.latent_scheduler is not None:
            self.add_event_handler(Events.EPOCH_COMPLETED, self._step_latent_scheduler)
            self.add_event_handler(Events.EPOCH_COMPLETED, self._push)

    # ------------------------------------------------------------------ state for checkpoints
    def checkpoint_objects(self) -> dict[str, Any]:
        """Everything a resumed run needs, for MONAI ``CheckpointSaver``/``CheckpointLoader`` ``save_dict``."""
        objects: dict[str, Any] = {"network": self.network, "trainer": self, "warmup_optimizer": self.warmup_optimizer}
        if self.warmup_model is not self.network:
            objects["warmup_head"] = self.warmup_model.head
        if self.latent_optimizer is not None:
            objects.update(
                latent_optimizer=self.latent_optimizer,
                latent_scheduler=self.latent_scheduler,
                classifier_optimizer=self.classifier_optimizer,
            )
        return objects

    # ------------------------------------------------------------------ stages
    def module_for(self, stage: Stage) -> nn.Module:
        """The module trained in ``stage``."""
        return self.warmup_model if stage == Stage.WARMUP else self.network

    def optimizer_for(self, stage: Stage) -> torch.optim.Optimizer:
        return {
            Stage.WARMUP: self.warmup_optimizer,
            Stage.LATENT: self.latent_optimizer,
            Stage.CLASSIFIER: self.classifier_optimizer,
        }[stage]

    def _reseed(self, engine: PrototypeTrainer) -> None:
        """``EPOCH_STARTED``: seed the epoch's shuffling and augmentation from ``(seed, epoch)`` alone."""
        reseed(epoch_seed(self.seed, engine.state.epoch), self.reseeded_dataset)

    def _start_stage(self, engine: PrototypeTrainer) -> None:
        """``EPOCH_STARTED``: enter the epoch's stage: ``state.stage``, trainable groups and module modes
        (:func:`~monai_protoshare.engines.stages.set_stage`), ``forward_module``, the data source, ``state.lr``."""
        epoch = engine.state.epoch
        stage = self.schedule.stage(epoch)
        if stage != engine.state.stage:
            logger.info("epoch %d: stage %s", epoch, stage.value)
        engine.state.stage = stage
        frozen_encoder = stage == Stage.LATENT and self.schedule.latent_epoch_index(epoch) < self.frozen_encoder_epochs
        set_stage(self.network, self.warmup_model, stage, frozen_encoder)
        self.forward_module = self.warmup_model if stage == Stage.WARMUP else self.network.explain
        self._select_data(stage)
        engine.state.lr = self.optimizer_for(stage).param_groups[0]["lr"]
        engine.state.rank = dist.get_rank() if self.distributed else 0

    def _select_data(self, stage: Stage) -> None:
        """The training loader, or with ``classifier_inputs="cached"`` in stage 3 the push's similarities
        (:class:`SimilarityBatches`); a latent epoch drops the cache, since the next push replaces the prototypes."""
        cached = isinstance(self.state.dataloader, SimilarityBatches)
        if stage == Stage.LATENT:
            self.classifier_cache = None
        if stage != Stage.CLASSIFIER or self.classifier_inputs != "cached":
            if cached:
                self.set_data(self.data_loader)
            return
        if cached:
            return
        batch_size = getattr(self.data_loader, "batch_size", None) or 1
        batches, self.classifier_cache = classifier_batches(
            self.network, self.classifier_cache, self.push_data_loader, batch_size, self.state.epoch_length
        )
        self.set_data(batches)

    def _step_latent_scheduler(self, engine: PrototypeTrainer) -> None:
        if self.schedule.stage(engine.state.epoch) == Stage.LATENT:
            self.latent_scheduler.step()

    def _push(self, engine: PrototypeTrainer) -> None:
        """``EPOCH_COMPLETED`` of the last latent epoch of each block: the push (eq. 20); its similarities become
        the stage-3 cache, its :class:`~monai_protoshare.explain.push.PushResult` ``state.push_result``, and rank 0
        writes the provenance JSON to ``push_output_dir``."""
        epoch = engine.state.epoch
        if not self.schedule.push_after(epoch):
            return
        result = push_prototypes(self.network, self.push_data_loader, engine.state.device, epoch=epoch)
        engine.state.push_result = result
        engine.state.push_seconds = result.seconds
        self.classifier_cache = (result.similarities, result.labels)
        log_push(result, epoch)
        if self.push_output_dir is not None and engine.state.rank == 0:
            write_provenance(self.network, self.push_output_dir, epoch)

    @staticmethod
    def _forward_completed(engine: PrototypeTrainer, logits: torch.Tensor) -> None:
        engine.state.output[CommonKeys.PRED] = logits
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)

    def _iteration(self, engine: PrototypeTrainer, batchdata: dict[str, torch.Tensor]) -> dict[str, Any]:
        """One optimisation step of the current stage, firing MONAI's ``IterationEvents`` as ``SupervisedTrainer``.

        ``state.output`` holds ``{"label": (B,)}``, then ``"pred"`` (logits (B, C)) at ``FORWARD_COMPLETED`` and
        ``"loss"`` (the stage loss, a 0-d tensor) at ``LOSS_COMPLETED``; ``BACKWARD_COMPLETED`` follows the backward
        pass (gradients averaged over ranks), ``MODEL_COMPLETED`` the optimiser step.

        Returns ``{"pred": logits (B, C), "label": (B,), "loss": float, <loss terms>: float}``.
        """
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        stage = engine.state.stage
        if "similarities" in batchdata:  # stage 3 on cached similarities
            images = None
            labels = batchdata["label"].to(engine.state.device)
        else:
            images, labels = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)[:2]
            images = images.contiguous(memory_format=self.memory_format)
        labels = labels.long().view(-1)
        engine.state.output = {CommonKeys.LABEL: labels}
        optimizer = self.optimizer_for(stage)
        optimizer.zero_grad(set_to_none=True)
        if self.distributed and stage != Stage.CLASSIFIER:
            broadcast_buffers(self.module_for(stage))  # as DDP's broadcast_buffers: rank 0's BN statistics
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=engine.amp):
            if stage == Stage.WARMUP:
                logits = engine.forward_module(images)
                self._forward_completed(engine, logits)
                terms = {"cls": F.cross_entropy(logits, labels)}
                terms["loss"] = terms["cls"]
            elif stage == Stage.LATENT:
                output = engine.forward_module(images)
                logits = output.logits
                self._forward_completed(engine, logits)
                masks = batchdata.get("mask")  # only the fine-annotation loss reads them (configs/ablations/fine.yaml)
                masks = None if masks is None else masks.to(engine.state.device)
                terms = self.latent_loss(self.network, output, labels, masks=masks)
            else:
                if images is None:
                    similarities = batchdata["similarities"].to(engine.state.device)
                else:
                    with torch.no_grad():
                        similarities = self.network.explain(images, online_cam=False).similarities
                logits = self.network.classifier(similarities.float())
                self._forward_completed(engine, logits)
                terms = self.classifier_loss(self.network, logits, labels)
            engine.state.output[CommonKeys.LOSS] = terms["loss"]
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
        terms["loss"].backward()
        if self.distributed:
            average_gradients(p for group in optimizer.param_groups for p in group["params"])
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        out = {k: float(v.detach()) for k, v in terms.items()}
        out.update({CommonKeys.PRED: logits.detach().float(), CommonKeys.LABEL: labels})
        return out
