"""Training pieces of the segmentation bundles (``bundles/proto_seg``, ``bundles/segresnet``; issue 23).

The bundles train with MONAI's ``SupervisedTrainer``; this module supplies what differs from its defaults:

- :func:`seg_transforms`: the project's preprocessing (and augmentation), then the BraTS labels as the three
  overlapping region masks of MONAI's ``ConvertToMultiChannelBasedOnBratsClassesd``, channels [TC, WT, ET], in
  place of ``seg`` (3, H, W, D). ``label`` (the grade) passes through untouched.
- :func:`seg_prepare_batch`: (image, region masks) for the trainer and evaluators (the default would read
  ``label``, the grade).
- :class:`ProtoSegIteration`: one optimiser step on :class:`~monai_protoshare.losses.segmentation.ProtoSegLoss`,
  which needs the similarities as well as the logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.transforms import AsDiscreted, Compose, ConvertToMultiChannelBasedOnBratsClassesd

from monai_protoshare.data.transforms import eval_transforms, train_transforms

__all__ = ["ProtoSegIteration", "seg_prepare_batch", "seg_transforms"]

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


class ProtoSegIteration:
    """``iteration_update`` of a ``SupervisedTrainer`` for ProtoSeg: forward_features, loss terms, one step.

    The engine's ``loss_function`` is a :class:`~monai_protoshare.losses.segmentation.ProtoSegLoss`; the returned
    output holds ``pred`` (logits), ``label`` (masks), ``loss`` and every term (``seg``, ``l1``, ``diversity``)
    as floats, for the StatsHandler and TensorBoard.
    """

    def __call__(self, engine, batchdata: dict[str, Any]) -> dict[str, Any]:
        image, target = seg_prepare_batch(batchdata, engine.state.device, engine.non_blocking)
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        output = engine.network.forward_features(image)
        terms = engine.loss_function(output, target)
        terms["loss"].backward()
        engine.optimizer.step()
        result = {name: float(value.detach()) for name, value in terms.items() if name != "loss"}
        return {
            "image": image,
            "label": target,
            "pred": output.logits.detach(),
            "loss": terms["loss"].detach(),
            **result,
        }
