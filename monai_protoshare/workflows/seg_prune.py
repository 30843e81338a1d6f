"""Explanations that improve the model (issue 23, seed 004): a pruning curve of the last layer's inputs.

Both segmentation bundles end in a linear map from C input channels F (B, C, h, w, d) to R region logits, then
(for ProtoSeg) trilinear upsampling: ProtoSeg's non-negative layer on the prototype similarities (C = K), SegResNet's
final 1×1×1 convolution on its last decoder features (``head_layer``). A channel's total contribution over the
training fold is Σ_r |w_{r,c}| Σ_{cases, v} |F_c(v)| (for ProtoSeg exactly the summed contributions w_{r,k} S_k, all
≥ 0). For each fraction f the ⌊f C⌋ channels with the smallest contribution are removed (their weights set to 0),
the last layer alone is re-fitted (Adam on Dice + BCE, removed channels kept at 0, ProtoSeg's weights kept ≥ 0),
and the held-out Dice per region is recorded: a curve a user can pick a smaller model from.

The head's inputs are computed once per case and cached (ProtoSeg: the feature grid; SegResNet: full resolution,
``C × H × W × D`` floats a case), so re-fitting never runs the encoder again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.metrics import compute_dice
from torch import nn

from monai_protoshare.io import write_json
from monai_protoshare.networks.proto_seg import BRATS_REGIONS, ProtoSegNetwork
from monai_protoshare.workflows.seg_train import seg_prepare_batch

__all__ = ["cache_head_inputs", "channel_contributions", "head_logits", "pruning_curve", "refit_head"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def cache_head_inputs(
    network: nn.Module, data_loader, device: str | torch.device = "cpu", head_layer: str = "conv_final.2.conv"
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor, bool]:
    """Last-layer inputs and targets of every batch, and the layer's weight (R, C), bias (R,) and non-negativity.

    ``head_layer`` names a 1×1×1 ``Conv3d`` of a conventional network; ProtoSeg's head is its non-negative layer.
    """
    network.eval().to(device)
    features, targets = [], []
    if isinstance(network, ProtoSegNetwork):
        weight, bias, non_negative = network.region_weights.detach(), network.last_layer_bias.detach(), True
        forward = lambda x: network.forward_features(x).similarities  # noqa: E731
    else:
        conv = dict(network.named_modules()).get(head_layer)
        if not isinstance(conv, nn.Conv3d) or conv.kernel_size != (1, 1, 1):
            raise ValueError(f"head_layer {head_layer!r} must be a 1x1x1 Conv3d; got {conv}.")
        weight, bias, non_negative = conv.weight.detach()[:, :, 0, 0, 0], conv.bias.detach(), False
        captured: list[torch.Tensor] = []
        handle = conv.register_forward_hook(lambda m, inputs, out: captured.append(inputs[0]))

        def forward(x: torch.Tensor) -> torch.Tensor:
            captured.clear()
            network(x)
            return captured[0]

    try:
        for batch in data_loader:
            image, target = seg_prepare_batch(batch, device)
            features.append(forward(image.as_tensor() if hasattr(image, "as_tensor") else image).cpu())
            targets.append(torch.as_tensor(target).cpu().float())
    finally:
        if not isinstance(network, ProtoSegNetwork):
            handle.remove()
    return features, targets, weight.cpu(), bias.cpu(), non_negative


def head_logits(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """up(W F + b): features (B, C, h, w, d), weight (R, C), bias (R,) -> logits (B, R, *size)."""
    logits = torch.einsum("bchwd,rc->brhwd", features, weight) + bias.view(1, -1, 1, 1, 1)
    return logits if logits.shape[2:] == tuple(size) else F.interpolate(logits, size=tuple(size), mode="trilinear")


def channel_contributions(features: Sequence[torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """Σ_r |w_{r,c}| Σ_{cases, v} |F_c(v)|: (C,)."""
    mass = sum(f.abs().sum(dim=(0, 2, 3, 4)) for f in features)
    return weight.abs().sum(dim=0) * mass


def refit_head(
    features: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor,
    keep: torch.Tensor,
    non_negative: bool,
    epochs: int = 20,
    lr: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-fit the last layer on cached inputs with the channels ``~keep`` held at 0; returns (weight, bias)."""
    w = nn.Parameter(weight.clone() * keep)
    b = nn.Parameter(bias.clone())
    optimiser = torch.optim.Adam([w, b], lr=lr)
    loss = DiceCELoss(sigmoid=True)
    for _ in range(epochs):
        for f, t in zip(features, targets):
            optimiser.zero_grad()
            used = (F.relu(w) if non_negative else w) * keep
            loss(head_logits(f, used, b, t.shape[2:]), t).backward()
            optimiser.step()
    used = (F.relu(w) if non_negative else w) * keep
    return used.detach(), b.detach()


def _dice(features, targets, weight, bias) -> torch.Tensor:
    """Mean Dice per region (R,) of σ(logits) > 0.5 over the cached cases."""
    scores = [
        compute_dice((head_logits(f, weight, bias, t.shape[2:]) > 0).float(), t, ignore_empty=False)
        for f, t in zip(features, targets)
    ]
    return torch.cat(scores).mean(dim=0)


def pruning_curve(
    network: nn.Module,
    train_loader,
    eval_loader,
    output_dir: str | os.PathLike | None = None,
    fractions: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 0.75),
    refit_epochs: int = 20,
    lr: float = 0.01,
    device: str | torch.device = "cpu",
    head_layer: str = "conv_final.2.conv",
    regions: Sequence[str] = BRATS_REGIONS,
) -> list[dict[str, Any]]:
    """Held-out Dice per region after removing the lowest-contribution fraction of channels and re-fitting.

    Fraction 0 is re-fitted too, so every point had the same re-fitting. Writes ``<output_dir>/pruning.json`` when
    ``output_dir`` is given. Returns one record per fraction: ``fraction``, ``removed`` (channel indices), ``kept``,
    ``dice_<region>``.
    """
    train_f, train_t, weight, bias, non_negative = cache_head_inputs(network, train_loader, device, head_layer)
    eval_f, eval_t, *_ = cache_head_inputs(network, eval_loader, device, head_layer)
    order = channel_contributions(train_f, weight).argsort()  # smallest contribution first
    records = []
    for fraction in fractions:
        if not 0 <= fraction < 1:
            raise ValueError(f"fractions must be in [0, 1); got {fraction}.")
        removed = order[: int(fraction * weight.shape[1])]
        keep = torch.ones(weight.shape[1])
        keep[removed] = 0
        w, b = refit_head(train_f, train_t, weight, bias, keep, non_negative, refit_epochs, lr)
        dice = _dice(eval_f, eval_t, w, b)
        records.append(
            {
                "fraction": float(fraction),
                "removed": removed.tolist(),
                "kept": int(keep.sum()),
                **{f"dice_{r}": float(d) for r, d in zip(regions, dice)},
            }
        )
        logger.info("pruning %.2f: kept %d channels, Dice %s", fraction, int(keep.sum()), dice.tolist())
    if output_dir is not None:
        write_json(Path(output_dir) / "pruning.json", {"head_layer": head_layer, "curve": records})
    return records
