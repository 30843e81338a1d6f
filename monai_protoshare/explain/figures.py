"""Figures of the prototype evidence (matplotlib ``Figure`` objects, Agg; no pyplot state): Fig. 5, App. G.

* :func:`case_figure`: one case in the style of the paper's Fig. 5. A first row shows T1-CE, FLAIR and the
  class evidence map (eq. 28) with its label-overlay contour, plus the prediction. Then one row per scale: the
  attention map of that scale's prototype on T1-CE (the most shared one, eq. 30, when a sharedness is known;
  else the one contributing most to the explained class), the prototype's source patch after the push, the
  per-sequence similarity drops, and ``S × w = contribution`` for every class (eq. 31).
* :func:`prototype_gallery`: after a push, every prototype's source case, the axial slice through the centre
  of its box, in all four sequences, with the box drawn.

Slices are axial, shown in radiological convention (patient's right on the left, anterior up) on the network
grid (RAS after the preprocessing).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..data.cases import SEQUENCE_NAMES
from ..io import atomic_path
from .evidence import CaseEvidence, PrototypeCatalogue, PrototypeSource
from .evidence_maths import OVERLAY_THRESHOLD, overlay_cutoff

__all__ = ["case_figure", "prototype_gallery", "save_figure"]

_T1CE, _FLAIR = 1, 3
_PANEL_INCHES = 2.2
# Intensity window of MR slices: robust percentiles of the brain voxels (z-scored inputs have long tails).
_WINDOW_PERCENTILES = (1.0, 99.0)
_SOURCE_MARGIN = 2  # voxels of context around a prototype's box in its source patch
_GRAY_BLACK_BACKGROUND = colormaps["gray"].with_extremes(bad="black")


def save_figure(figure: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Atomically save ``figure`` (format from the suffix of ``path``)."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, format=Path(path).suffix.lstrip(".") or "png", bbox_inches="tight")
    return Path(path)


def _display(plane: np.ndarray) -> np.ndarray:
    """(H, W) axial plane of a RAS grid -> image rows (anterior up) and columns (patient's right on the left)."""
    return np.asarray(plane).T[::-1, ::-1]


def _window(plane: np.ndarray) -> tuple[float, float]:
    brain = plane[plane != 0]
    if brain.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(brain, _WINDOW_PERCENTILES)
    return float(low), float(max(high, low + 1e-6))


def _show_mr(ax, plane: np.ndarray, title: str) -> None:
    """An MR plane; exact zeros (the background of skull-stripped, z-scored inputs) are shown black."""
    low, high = _window(plane)
    shown = np.ma.masked_equal(_display(plane), 0.0)
    ax.imshow(shown, cmap=_GRAY_BLACK_BACKGROUND, vmin=low, vmax=high, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.02, 0.5, "R", color="yellow", fontsize=7, transform=ax.transAxes, va="center")


def _show_heat(ax, plane: np.ndarray, volume: torch.Tensor) -> None:
    """Overlay one plane of a map, min-max scaled over the whole ``volume``: opaque where high, clear where low."""
    low, high = float(volume.min()), float(volume.max())
    shown = (_display(plane) - low) / max(high - low, 1e-12)
    ax.imshow(shown, cmap="jet", alpha=np.clip(shown, 0.0, 1.0) * 0.7, vmin=0.0, vmax=1.0, interpolation="bilinear")


def _peak_slice(volume: torch.Tensor) -> int:
    """Axial index of the volume's largest value."""
    return int(np.unravel_index(int(volume.argmax()), tuple(volume.shape))[2])


def _text(ax, lines: Sequence[str]) -> None:
    ax.axis("off")
    ax.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", fontsize=7.5, family="monospace", transform=ax.transAxes)


def _box_rectangle(box: Sequence[int], plane_shape: tuple[int, int], **style) -> Rectangle:
    """The (x0, y0, x1, y1) part of a box as a rectangle in :func:`_display` coordinates."""
    h, w = plane_shape
    x0, y0, _, x1, y1, _ = box
    return Rectangle((h - x1 - 0.5, w - y1 - 0.5), x1 - x0, y1 - y0, fill=False, **style)


def case_figure(
    image: torch.Tensor,
    evidence: CaseEvidence,
    catalogue: PrototypeCatalogue,
    sources: Mapping[int, PrototypeSource] | None = None,
    overlay_threshold: float = OVERLAY_THRESHOLD,
) -> Figure:
    """Fig.-5-style figure of one case (module docstring).

    Args:
        image: the preprocessed case, (4, H, W, D), channels [T1, T1-CE, T2, FLAIR].
        evidence: its :class:`~monai_protoshare.explain.evidence.CaseEvidence` (same grid).
        catalogue: the network's prototype catalogue.
        sources: prototype sources (source patches); a missing one is marked "not available".
        overlay_threshold: relative level of the label-overlay contour.

    Returns:
        A ``Figure`` with 1 + (number of scales) rows and 4 columns.
    """
    image = torch.as_tensor(image).detach().float().cpu()
    sources = sources or {}
    rows = 1 + len(evidence.scale_prototypes)
    fig = Figure(figsize=(4 * _PANEL_INCHES, rows * _PANEL_INCHES), layout="constrained")
    axes = fig.subplots(rows, 4, squeeze=False)
    _case_row(axes[0], image, evidence, catalogue, overlay_threshold)
    for row, j in enumerate(evidence.scale_prototypes, start=1):
        _prototype_row(axes[row], image, evidence, catalogue, j, sources.get(j))
    return fig


def _case_row(
    axes: Sequence[Axes], image: torch.Tensor, evidence: CaseEvidence, catalogue: PrototypeCatalogue, threshold: float
) -> None:
    """First row: T1-CE and FLAIR at the class map's peak slice, the class evidence with its overlay contour,
    and the prediction with the top prototypes' contributions."""
    classes = catalogue.class_names
    z = _peak_slice(evidence.class_map)
    class_plane = evidence.class_map[..., z].numpy()
    _show_mr(axes[0], image[_T1CE, ..., z].numpy(), f"T1-CE  z={z}")
    _show_mr(axes[1], image[_FLAIR, ..., z].numpy(), "FLAIR")
    _show_mr(axes[2], image[_T1CE, ..., z].numpy(), f"class evidence ({classes[evidence.target]})")
    _show_heat(axes[2], class_plane, evidence.class_map)
    cutoff = overlay_cutoff(evidence.class_map, threshold)
    if (class_plane >= cutoff).any():
        axes[2].contour(_display(class_plane >= cutoff).astype(float), levels=[0.5], colors="white", linewidths=0.8)
    probs = ", ".join(f"{c} {p:.2f}" for c, p in zip(classes, evidence.probabilities.tolist(), strict=True))
    label = "?" if evidence.label is None else classes[evidence.label]
    top = [
        f"s{catalogue.scales[j]} k{catalogue.indices[j]:02d}: {float(evidence.contributions[evidence.target, j]):+.3f}"
        for j in evidence.top_prototypes
    ]
    _text(
        axes[3],
        [evidence.subject_id, f"prediction: {classes[evidence.prediction]}", f"label: {label}", probs, "",
         f"top prototypes (Δy_{classes[evidence.target]})", *top],
    )  # fmt: skip


def _prototype_row(
    axes: Sequence[Axes],
    image: torch.Tensor,
    evidence: CaseEvidence,
    catalogue: PrototypeCatalogue,
    j: int,
    source: PrototypeSource | None,
) -> None:
    """A scale's row for prototype ``j``: its attention at its peak slice, its source patch, the similarity drop
    without each sequence, and its similarity, sharedness and contribution to each class."""
    scale, k = catalogue.scales[j], catalogue.indices[j]
    attention = evidence.maps[j]
    zj = _peak_slice(attention)
    _show_mr(axes[0], image[_T1CE, ..., zj].numpy(), f"scale {scale}, prototype {k}: attention")
    _show_heat(axes[0], attention[..., zj].numpy(), attention)
    _source_patch(axes[1], source)
    drops = evidence.sequence_drops[j].numpy()
    axes[2].bar(range(len(SEQUENCE_NAMES)), drops, color=["tab:blue", "tab:red", "tab:green", "tab:purple"])
    axes[2].axhline(0.0, color="black", linewidth=0.5)
    axes[2].set_xticks(range(len(SEQUENCE_NAMES)), SEQUENCE_NAMES, fontsize=6)
    axes[2].tick_params(axis="y", labelsize=6)
    axes[2].set_title("similarity drop without sequence", fontsize=8)
    sim = float(evidence.similarities[j])
    lines = [f"S = {sim:.2f}"]
    if catalogue.sharedness is not None:
        lines.append(f"sharedness φ = {float(catalogue.sharedness[j]):.2f}")
    lines.append("")
    for c, name in enumerate(catalogue.class_names):
        weight = float(catalogue.class_weights[c, j])
        lines.append(f"{name}: {sim:.2f} × {weight:+.2f} = {float(evidence.contributions[c, j]):+.2f}")
    _text(axes[3], lines)


def _source_patch(ax, source: PrototypeSource | None) -> None:
    """The T1-CE of the prototype's source slice, cropped to its box plus a margin."""
    if source is None:
        ax.axis("off")
        ax.text(0.5, 0.5, "source patch\nnot available", ha="center", va="center", fontsize=8, transform=ax.transAxes)
        return
    plane = source.slices[_T1CE].numpy()
    x0, y0, _, x1, y1, _ = source.box
    h, w = plane.shape
    lo_x, hi_x = max(x0 - _SOURCE_MARGIN, 0), min(x1 + _SOURCE_MARGIN, h)
    lo_y, hi_y = max(y0 - _SOURCE_MARGIN, 0), min(y1 + _SOURCE_MARGIN, w)
    crop = plane[lo_x:hi_x, lo_y:hi_y]
    _show_mr(ax, crop, f"source: {source.subject_id}")
    box = (x0 - lo_x, y0 - lo_y, 0, x1 - lo_x, y1 - lo_y, 0)
    ax.add_patch(_box_rectangle(box, crop.shape, edgecolor="lime", linewidth=1.0))


def prototype_gallery(
    sources: Mapping[int, PrototypeSource], catalogue: PrototypeCatalogue, max_columns: int = len(SEQUENCE_NAMES)
) -> Figure:
    """Every prototype's source case after the push: the slice through its box, per sequence (module docstring).

    Args:
        sources: global index -> :class:`~monai_protoshare.explain.evidence.PrototypeSource`; missing
            prototypes get an empty row with a note.
        catalogue: the network's prototype catalogue (names, push similarity, sharedness).
        max_columns: sequences shown (the first ``max_columns`` of T1, T1-CE, T2, FLAIR).

    Returns:
        A ``Figure`` with one row per prototype.
    """
    total = len(catalogue.provenance)
    columns = min(max_columns, len(SEQUENCE_NAMES))
    fig = Figure(figsize=(columns * _PANEL_INCHES * 0.8, total * _PANEL_INCHES * 0.8), layout="constrained")
    axes = fig.subplots(total, columns, squeeze=False)
    for j in range(total):
        source = sources.get(j)
        name = f"s{catalogue.scales[j]} k{catalogue.indices[j]}"
        for m in range(columns):
            ax = axes[j, m]
            if source is None:
                ax.axis("off")
                if m == 0:
                    ax.text(0.0, 0.5, f"{name}: not pushed or source not found", fontsize=7, transform=ax.transAxes)
                continue
            plane = source.slices[m].numpy()
            title = SEQUENCE_NAMES[m]
            if m == 0:
                shared = "" if catalogue.sharedness is None else f" φ={float(catalogue.sharedness[j]):.2f}"
                title = f"{name} ← {source.subject_id}{shared}\n{title}"
            _show_mr(ax, plane, title)
            ax.add_patch(_box_rectangle(source.box, plane.shape, edgecolor="lime", linewidth=1.0))
    return fig
