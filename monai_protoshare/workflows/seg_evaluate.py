"""Evaluation of a segmentation bundle on its held-out fold (issue 23): Dice/HD95 per region and deletion areas.

:func:`evaluate_segmentation` runs the network on every held-out case, scores the thresholded regions
(σ(logit) > 0.5) with :func:`~monai_protoshare.metrics.segmentation.compute_region_metrics`, and for every
configured explainer the deletion area (:func:`~monai_protoshare.metrics.segmentation.segmentation_deletion_curve`,
region's summed probability) of its map of ``deletion_region``. Writes ``<output_dir>/metrics.json`` atomically:
the means (``dice_<region>``, ``hd95_<region>``, ``deletion_<explainer>``), ``n`` and the per-case values.

Explainers are callables ``(network, image (1, 4, H, W, D), region) -> map (1, 1, H, W, D)``, built in the bundle
config, e.g. ``functools.partial(seg_grad_cam, layer="aspp")`` or :func:`prototype_evidence`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from monai_protoshare.io import write_json
from monai_protoshare.metrics.segmentation import (
    compute_region_metrics,
    segmentation_deletion_curve,
    summarise_region_metrics,
)
from monai_protoshare.networks.proto_seg import BRATS_REGIONS
from monai_protoshare.workflows.seg_train import seg_prepare_batch

__all__ = ["evaluate_segmentation", "prototype_evidence"]

logger = logging.getLogger(__name__)

Explainer = Callable[[nn.Module, torch.Tensor, int], torch.Tensor]


def prototype_evidence(network: nn.Module, image: torch.Tensor, region: int) -> torch.Tensor:
    """ProtoSeg's own explanation of a region: Σ_k w_{r,k} up(S_k), the prototype part of its logit, (B, 1, H, W, D)."""
    with torch.no_grad():
        return network(image)[:, region : region + 1] - network.last_layer_bias[region]


@torch.no_grad()
def evaluate_segmentation(
    network: nn.Module,
    data_loader,
    output_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    spacing: float | Sequence[float] | None = None,
    explainers: dict[str, Explainer] | None = None,
    deletion_region: int = 1,
    deletion_steps: int = 50,
    regions: Sequence[str] = BRATS_REGIONS,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score every held-out case and write ``metrics.json``; returns what it wrote.

    Args:
        network: the trained network (put in eval mode here).
        data_loader: batches of one case with ``image`` and ``seg`` region masks (:func:`seg_transforms`).
        output_dir: the fold's folder.
        device: where the network runs.
        spacing: voxel size (mm) of the network grid, for HD95.
        explainers: name -> explainer (see the module docstring); none by default.
        deletion_region: region whose maps the deletion curves follow (1 = WT).
        deletion_steps: steps of the deletion curves (50: 2 %).
        regions: names of the logit channels.
        extra: added to ``metrics.json`` (model, fold, ...).
    """
    network.eval().to(device)
    explainers = explainers or {}
    dice, hd95, cases = [], [], []
    areas: dict[str, list[float]] = {name: [] for name in explainers}
    for batch in data_loader:
        image, target = seg_prepare_batch(batch, device)
        if image.shape[0] != 1:
            raise ValueError(f"evaluate_segmentation needs batches of one case; got {image.shape[0]}.")
        logits = network(image)
        metrics = compute_region_metrics((torch.sigmoid(logits) > 0.5).float(), target, spacing)
        dice.append(metrics["dice"].cpu())
        hd95.append(metrics["hd95"].cpu())
        case = {"subject_id": str(batch.get("subject_id", [len(cases)])[0])}
        case.update({f"dice_{r}": float(v) for r, v in zip(regions, metrics["dice"][0])})
        for name, explain in explainers.items():
            with torch.enable_grad():
                attribution = explain(network, image, region=deletion_region).detach()
            _, area = segmentation_deletion_curve(network, image, attribution, deletion_region, steps=deletion_steps)
            areas[name].append(area)
            case[f"deletion_{name}"] = area
        cases.append(case)
    if not cases:
        raise ValueError("evaluate_segmentation: the data loader yielded no cases.")
    result: dict[str, Any] = {
        **(extra or {}),
        "n": len(cases),
        **summarise_region_metrics({"dice": torch.cat(dice), "hd95": torch.cat(hd95)}, regions),
        **{f"deletion_{name}": sum(values) / len(values) for name, values in areas.items()},
        "deletion_region": regions[deletion_region],
        "cases": cases,
    }
    write_json(Path(output_dir) / "metrics.json", result)
    logger.info("segmentation metrics: %s", {k: v for k, v in result.items() if k != "cases"})
    return result
