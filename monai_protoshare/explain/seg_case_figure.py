"""Case figure of ProtoSeg (issue 23): one voxel's top prototypes, where they match in the case, and where they came
from (matplotlib ``Figure``, Agg; no pyplot state).

For a voxel v of a case, ProtoSeg's region logit is logit_r(v) = Σ_k w_{r,k} up(S_k)(v) + b_r
(:meth:`~monai_protoshare.networks.proto_seg.ProtoSegNetwork.explain_voxel`). The figure shows, for region r:

- row 1: the case's axial slice through v (v marked, the predicted region outlined), then for each of the top-k
  prototypes by contribution w_{r,k} up(S_k)(v) its similarity map up(S_k) on that slice;
- row 2: each prototype's source patch, the axial slice of the training case it was pushed onto (the push's
  ``prototypes.json``: ``subject_id``, ``input_voxel``, ASPP ``dilation``), centred on that voxel.

:func:`seg_case_figure` builds it from tensors; ``docs/seg_case_figure.py`` from a trained fold's folder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from ..networks.modes import evaluating
from ..networks.proto_seg import BRATS_REGIONS, ProtoSegNetwork, VoxelExplanation

__all__ = ["seg_case_figure", "tumour_voxel"]

FLAIR = 3  # channel shown: FLAIR, where the whole tumour is brightest


def tumour_voxel(logits: torch.Tensor, region: int = 1, mask: torch.Tensor | None = None) -> tuple[int, int, int]:
    """The voxel with the largest logit of ``region``, inside ``mask`` (H, W, D) when given (e.g. the true tumour).

    Args:
        logits: (R, H, W, D) region logits of one case.
    """
    values = logits[region].clone()
    if mask is not None:
        if not mask.any():
            raise ValueError("mask has no voxel: give a case with a tumour or a voxel.")
        values[~mask.bool()] = -float("inf")
    index = int(values.flatten().argmax())
    return tuple(int(i) for i in np.unravel_index(index, tuple(values.shape)))


def _axial(volume: torch.Tensor | np.ndarray, z: int) -> np.ndarray:
    """(H, W, D) -> the axial plane at z as image rows (anterior up) and columns (patient's right on the left)."""
    return np.asarray(volume)[:, :, z].T[::-1, ::-1]


def _patch(volume: torch.Tensor, centre: Sequence[int], half: int) -> np.ndarray:
    """The axial square of side 2·half + 1 around ``centre`` of (H, W, D), zero outside the volume."""
    padded = F.pad(volume, (0, 0, half, half, half, half))
    i, j, k = (int(c) for c in centre)
    return _axial(padded[i : i + 2 * half + 1, j : j + 2 * half + 1].cpu(), k)


def seg_case_figure(
    network: ProtoSegNetwork,
    image: torch.Tensor,
    provenance: Sequence[Mapping[str, Any]],
    source_image: Callable[[str], torch.Tensor],
    voxel: Sequence[int] | None = None,
    mask: torch.Tensor | None = None,
    region: int = 1,
    top_k: int = 3,
    patch_half_width: int = 8,
    title: str = "",
) -> tuple[Figure, VoxelExplanation, tuple[int, int, int]]:
    """One voxel's top prototypes for ``region``, their similarity maps and their source patches.

    Args:
        network: a trained, pushed ProtoSeg network (run in eval mode here, its modes restored).
        image: the preprocessed case (4, H, W, D).
        provenance: the push's record per prototype (``prototypes.json``'s ``prototypes``).
        source_image: subject id -> that training case, preprocessed like ``image`` (4, H, W, D).
        voxel: (i, j, k) on the input grid; ``None``: :func:`tumour_voxel` of the case (inside ``mask``).
        mask: (H, W, D) where to look for the voxel (e.g. the true whole tumour); ``None``: anywhere.
        region: index in [TC, WT, ET] whose logit is explained.
        top_k: prototypes shown.
        patch_half_width: source patches are (2·half + 1)² voxels of the network-input grid.
        title: put before the figure's title (e.g. the case's subject id).

    Returns:
        ``(figure, explanation of the voxel, voxel)``.
    """
    if len(provenance) != network.num_prototypes:
        raise ValueError(
            f"provenance lists {len(provenance)} prototypes, the network has {network.num_prototypes}: give the "
            "prototypes.json of this network's push."
        )
    x = image[None].to(network.prototypes.device)
    with evaluating(network), torch.no_grad():
        output = network.forward_features(x)
        if voxel is None:
            voxel = tumour_voxel(output.logits[0], region, mask)
        voxel = tuple(int(v) for v in voxel)
        explanation = network.explain_voxel(x, voxel, top_k=top_k)
        up = F.interpolate(output.similarities, size=x.shape[2:], mode="trilinear")[0].cpu()  # (K, H, W, D)
    predicted = (output.logits[0, region] > 0).cpu()
    prototypes = explanation.prototypes[region].tolist()

    figure = Figure(figsize=(3.0 * (len(prototypes) + 1), 6.4))
    axes = figure.subplots(2, len(prototypes) + 1, squeeze=False)
    plane = _axial(image[FLAIR].cpu(), voxel[2])
    marker = (image.shape[2] - 1 - voxel[1], image.shape[1] - 1 - voxel[0])  # (row, col) in the displayed plane
    _draw_voxel_column(axes[:, 0], plane, predicted, voxel, marker, f"{BRATS_REGIONS[region]} logit "
                       f"{float(explanation.logits[region]):.2f}")  # fmt: skip
    for column, k in enumerate(prototypes, start=1):
        axes[0, column].imshow(plane, cmap="gray")
        axes[0, column].imshow(_axial(up[k], voxel[2]), cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
        axes[0, column].plot(marker[1], marker[0], "w+", markersize=10, markeredgewidth=1.5)
        contribution, similarity = (float(t[region, column - 1]) for t in (explanation.contributions,
                                                                           explanation.similarities))  # fmt: skip
        axes[0, column].set_title(f"prototype {k}: w·s = {contribution:.2f}\n(s = {similarity:.2f})", fontsize=9)
        _draw_source_patch(axes[1, column], provenance[k], source_image, patch_half_width)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    heading = f"why this voxel is {BRATS_REGIONS[region]}: its top {len(prototypes)} prototypes"
    figure.suptitle(f"{title}: {heading}" if title else heading.capitalize(), fontsize=11)
    return figure, explanation, voxel


def _draw_voxel_column(axes, plane, predicted, voxel, marker, logit_text: str) -> None:
    """Column 0: the case's slice with the predicted region's outline and the voxel, and the figure's legend."""
    axes[0].imshow(plane, cmap="gray")
    if predicted[..., voxel[2]].any():
        axes[0].contour(_axial(predicted.float(), voxel[2]), levels=[0.5], colors="yellow", linewidths=0.8)
    axes[0].plot(marker[1], marker[0], "r+", markersize=12, markeredgewidth=2)
    axes[0].set_title(f"voxel {list(voxel)}\n{logit_text}", fontsize=9)
    axes[1].axis("off")
    legend = "logit = Σ_k w_k·s_k + b\nrow 1: s_k on this slice\nrow 2: the training voxel\nprototype k was pushed onto"
    axes[1].text(0.0, 0.5, legend, fontsize=9, va="center")


def _draw_source_patch(ax, source: Mapping[str, Any], source_image: Callable[[str], torch.Tensor], half: int) -> None:
    """The FLAIR patch around the training voxel a prototype was pushed onto, with the voxel marked."""
    patch = _patch(source_image(str(source["subject_id"]))[FLAIR], source["input_voxel"], half)
    ax.imshow(patch, cmap="gray")
    ax.plot(half, half, "r+", markersize=12, markeredgewidth=2)
    ax.set_title(
        f"{source['subject_id']}\nvoxel {list(source['input_voxel'])}, dilation {source['dilation']}", fontsize=8
    )
