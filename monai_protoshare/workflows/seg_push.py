"""Push (projection) of the segmentation prototypes onto training voxels (issue 23; ProtoPNet's push, eq. 20).

Every prototype p_k becomes the latent feature z_s(v) of the training voxel (case, ASPP scale s, feature-grid voxel
v) with the highest cosine similarity to it; afterwards each prototype IS a training voxel's feature, so "this
voxel looks like that voxel of case X" is literally true. Computation (:func:`push_segmentation_prototypes`) is
apart from file output (:func:`push_and_save`). The network is in eval mode (BN statistics frozen) during the pass.
As ProtoPNet does after its push, :func:`push_and_save` can then re-fit the last layer alone on the pushed
similarities (``last_layer_epochs``; weights kept >= 0): the push moves every prototype, and the region weights
learnt for the old ones no longer fit exactly.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from monai_protoshare.io import atomic_path, write_json
from monai_protoshare.networks.modes import evaluating
from monai_protoshare.networks.proto_seg import ProtoSegNetwork
from monai_protoshare.workflows.seg_prune import cache_head_inputs, refit_head

__all__ = ["push_and_save", "push_segmentation_prototypes", "save_network"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def push_segmentation_prototypes(
    network: ProtoSegNetwork, data_loader, device: str | torch.device | None = None
) -> list[dict[str, Any]]:
    """Replace each prototype by its nearest (cosine) training voxel feature, over every case and ASPP scale.

    Args:
        network: the ProtoSeg network (its ``prototypes`` are overwritten in place).
        data_loader: un-augmented training cases, batches with ``image`` (B, 4, H, W, D) and ``subject_id``.
        device: where to run the network (defaults to the prototypes' device).

    Returns:
        One provenance record per prototype: ``subject_id``, ``dilation`` (the ASPP scale), ``voxel`` (feature-grid
        index), ``input_voxel`` (its centre on the network-input grid) and ``similarity`` (cosine before the push).

    Raises:
        ValueError: an empty data loader.
    """
    device = device or network.prototypes.device
    with evaluating(network):
        num_prototypes, dim = network.prototypes.shape
        best = torch.full((num_prototypes,), -float("inf"), device=device)
        best_features = torch.zeros(num_prototypes, dim, device=device)
        provenance: list[dict[str, Any]] = [{} for _ in range(num_prototypes)]
        for batch in data_loader:
            image = batch["image"].to(device)
            output = network.forward_features(image)
            cosine = output.scale_similarities  # (B, S, K, h, w, d)
            grid = cosine.shape[3:]
            values, index = cosine.movedim(2, 0).flatten(1).max(dim=1)  # over (B, S, h, w, d), per prototype
            features = output.features.movedim(2, -1).reshape(-1, dim)  # rows in (B, S, h, w, d) order
            for k in torch.nonzero(values > best).flatten().tolist():
                best[k], best_features[k] = values[k], features[index[k]]
                b, s, *voxel = (int(i) for i in torch.unravel_index(index[k], cosine.shape[:2] + grid))
                stride = [n // g for n, g in zip(image.shape[2:], grid)]
                provenance[k] = {
                    "subject_id": str(batch["subject_id"][b]) if "subject_id" in batch else str(b),
                    "dilation": network.aspp.dilations[s],
                    "voxel": voxel,
                    "input_voxel": [v * t + t // 2 for v, t in zip(voxel, stride)],
                    "similarity": float(values[k]),
                }
        if not torch.isfinite(best).all():
            raise ValueError("push data loader yielded no cases: cannot project the prototypes.")
        network.prototypes.copy_(best_features.to(network.prototypes.dtype))
    logger.info("pushed %d prototypes; mean cosine before the push %.3f", num_prototypes, float(best.mean()))
    return provenance


def push_and_save(
    network: ProtoSegNetwork,
    data_loader,
    output_dir: str | os.PathLike,
    model_path: str | os.PathLike,
    device: str | torch.device | None = None,
    last_layer_epochs: int = 0,
    last_layer_lr: float = 0.01,
) -> Path:
    """Push, re-fit the last layer for ``last_layer_epochs`` (if > 0; ``data_loader`` must then carry ``seg``), then
    write ``<output_dir>/prototypes.json`` and the network's state dict to ``model_path`` (atomic)."""
    provenance = push_segmentation_prototypes(network, data_loader, device)
    if last_layer_epochs > 0:
        features, targets, weight, bias, _ = cache_head_inputs(network, data_loader, device or "cpu")
        keep = torch.ones(weight.shape[1])
        weight, bias = refit_head(features, targets, weight, bias, keep, True, last_layer_epochs, last_layer_lr)
        with torch.no_grad():
            network.last_layer_weight.copy_(weight)  # already >= 0, so ReLU leaves it unchanged
            network.last_layer_bias.copy_(bias)
        network.train()
    write_json(Path(output_dir) / "prototypes.json", {"prototypes": provenance})
    return save_network(network, model_path)


def save_network(network: torch.nn.Module, model_path: str | os.PathLike) -> Path:
    """Write the network's state dict to ``model_path`` atomically (loaded back with ``weights_only=True``)."""
    with atomic_path(model_path) as tmp:
        torch.save(network.state_dict(), tmp)
    return Path(model_path)
