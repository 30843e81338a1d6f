"""Training pieces of the segmentation bundles (``bundles/proto_seg``, ``bundles/segresnet``; issue 23).

The bundles train with MONAI's ``SupervisedTrainer``; this module supplies what differs from its defaults:

- :func:`seg_transforms`: the project's preprocessing (and augmentation), then the BraTS labels as the three
  overlapping region masks of MONAI's ``ConvertToMultiChannelBasedOnBratsClassesd``, channels [TC, WT, ET], in
  place of ``seg`` (3, H, W, D). ``label`` (the grade) passes through untouched.
- :func:`seg_prepare_batch`: (image, region masks) for the trainer and evaluators (the default would read
  ``label``, the grade).
- :class:`SegIteration`: one optimiser step of a plain segmentation network (SegResNet) with a data-parallel option:
  gradients averaged over ranks by :mod:`~monai_protoshare.engines.distributed` (``multi_gpu_train.yaml``);
  :class:`ProtoSegIteration`: the same on :class:`~monai_protoshare.losses.segmentation.ProtoSegLoss`, which needs
  the similarities as well as the logits.
- :func:`validation_postprocessing`: σ(logits) > threshold, the region masks the validation Dice of
  ``train.yaml``'s per-epoch evaluator scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from monai.transforms import Activationsd, AsDiscreted, Compose, ConvertToMultiChannelBasedOnBratsClassesd

from monai_protoshare.data.transforms import eval_transforms, train_transforms
from monai_protoshare.engines.distributed import average_gradients, broadcast_buffers, broadcast_state

__all__ = ["ProtoSegIteration", "SegIteration", "seg_prepare_batch", "seg_transforms", "validation_postprocessing"]

SEG_KEY = "seg"


def seg_transforms(
    spatial_size: Sequence[int], pixdim: float | Sequence[float], augment: bool = False, train: bool = False
) -> Compose:
    """Preprocessing (+ augmentation when ``train and augment``) with ``seg`` as region masks (3, H, W, D) float32.

    Args:
        spatial_size, pixdim: the preset's network grid (DESIGN §4).
        augment: apply the App. C augmentations (training only); ``seg`` moves with the image (nearest).
        train: training transforms (augmentation possible) rather than evaluation ones.
    """
    if train:
        base = train_transforms(spatial_size, pixdim, augment=augment, with_seg=True)
    else:
        base = eval_transforms(spatial_size, pixdim, with_seg=True)
    return Compose(
        [
            *base.transforms,
            ConvertToMultiChannelBasedOnBratsClassesd(SEG_KEY),
            AsDiscreted(SEG_KEY, dtype=torch.float32),
        ]
    )


def seg_prepare_batch(
    batchdata: dict[str, Any], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image (B, 4, H, W, D), region masks (B, 3, H, W, D))`` on ``device``, the ``prepare_batch`` of MONAI engines."""
    if SEG_KEY not in batchdata:
        raise KeyError(f"batch has no '{SEG_KEY}' (region masks): build the data with seg_transforms(...).")
    image = batchdata["image"].to(device=device, non_blocking=non_blocking, **kwargs)
    return image, batchdata[SEG_KEY].to(device=device, non_blocking=non_blocking, **kwargs)


def validation_postprocessing(threshold: float = 0.5) -> Compose:
    """``pred`` logits (B, 3, H, W, D) -> region masks σ(logit) > ``threshold``, for MONAI's ``MeanDice``."""
    return Compose([Activationsd("pred", sigmoid=True), AsDiscreted("pred", threshold=threshold)])


class SegIteration:
    """``iteration_update`` of a ``SupervisedTrainer`` for a segmentation network: forward, loss, one step.

    The engine's ``loss_function`` maps (logits, masks) to a scalar (MONAI ``DiceCELoss``); the step is MONAI's
    default iteration's (``SupervisedTrainer._iteration`` without AMP). With ``distributed`` and an initialised
    process group it is data-parallel with DDP's meaning (:mod:`~monai_protoshare.engines.distributed`): the
    first step starts every rank from rank 0's parameters and buffers, rank 0's buffers (BN statistics) are
    broadcast before each forward, and the gradients are averaged over ranks, g = (1/N) Σ_r g_r, before the step.

    Args:
        distributed: average over ranks (``multi_gpu_train.yaml``); ignored when no process group is initialised.
    """

    def __init__(self, distributed: bool = False) -> None:
        self.distributed = bool(distributed)
        self._synchronised = False

    def _parallel(self) -> bool:
        return self.distributed and dist.is_available() and dist.is_initialized()

    def loss_terms(self, engine, image: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """``(logits (B, R, H, W, D), {"loss": scalar})`` of one batch."""
        logits = engine.inferer(image, engine.network)
        return logits, {"loss": engine.loss_function(logits, target).mean()}

    def __call__(self, engine, batchdata: dict[str, Any]) -> dict[str, Any]:
        image, target = seg_prepare_batch(batchdata, engine.state.device, engine.non_blocking)
        parallel = self._parallel()
        if parallel and not self._synchronised:
            broadcast_state(engine.network)
            self._synchronised = True
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        if parallel:
            broadcast_buffers(engine.network)
        logits, terms = self.loss_terms(engine, image, target)
        terms["loss"].backward()
        if parallel:
            average_gradients(engine.network.parameters())
        engine.optimizer.step()
        result = {name: float(value.detach()) for name, value in terms.items() if name != "loss"}
        return {"image": image, "label": target, "pred": logits.detach(), "loss": terms["loss"].detach(), **result}


class ProtoSegIteration(SegIteration):
    """``iteration_update`` for ProtoSeg: :meth:`~ProtoSegNetwork.forward_features`, the loss terms, one step.

    The engine's ``loss_function`` is a :class:`~monai_protoshare.losses.segmentation.ProtoSegLoss`; the returned
    output holds ``pred`` (logits), ``label`` (masks), ``loss`` and every term (``seg``, ``l1``, ``diversity``)
    as floats, for the StatsHandler and TensorBoard.
    """

    def loss_terms(self, engine, image: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        output = engine.network.forward_features(image)
        return output.logits, engine.loss_function(output, target)
