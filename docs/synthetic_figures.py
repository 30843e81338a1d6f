"""Figures of the synthetic cohort: one case per grade, its four sequences and its labels on an axial slice.

Usage::

    python docs/synthetic_figures.py                  # docs/images/synthetic_v3_{LGG,HGG}.png
    python docs/synthetic_figures.py --version 2      # the same for version 2
    python docs/synthetic_figures.py --out-dir /tmp --spacing 1

The cases are those of the demo's cohort (seed 0, 40 % LGG, 2 mm; :mod:`monai_protoshare.workflows.demo`): the
first case of each grade with its typical phenotype, drawn in memory exactly as ``generate_cohort`` writes it.
The slice is the axial one through the tumour's centre, in radiological convention (the patient's right on the
left, anterior up); each sequence is windowed to the 1st-99.5th percentiles of its brain voxels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from monai_protoshare.data.synthetic import (
    GENERATOR_VERSION,
    cohort_design,
    default_ambiguous_fraction,
    generate_case,
    subject_id,
)
from monai_protoshare.explain.figures import save_figure
from monai_protoshare.workflows.demo import DEMO_LGG_FRACTION

REPO = Path(__file__).resolve().parents[1]
TITLES = ("T1", "T1-CE", "T2", "FLAIR")
# BraTS label colours: necrotic / non-enhancing core (1), oedema (2), enhancing tumour (4).
LABELS = (
    (1, "necrotic / non-enhancing core (1)", "#e6194b"),
    (2, "oedema (2)", "#3cb44b"),
    (4, "enhancing (4)", "#ffe119"),
)
_GRAY = colormaps["gray"].with_extremes(bad="black")


def _display(plane: np.ndarray) -> np.ndarray:
    """(x, y) axial plane of the LPS grid -> image rows anterior to posterior, columns patient's right to left."""
    return np.asarray(plane).T


def case_figure(grade: str, version: int = GENERATOR_VERSION, spacing: float = 2.0, seed: int = 0) -> Figure:
    """Figure of the first typical case of ``grade`` (``"LGG"`` or ``"HGG"``) in the demo's cohort design."""
    design = cohort_design(200, seed, DEMO_LGG_FRACTION, default_ambiguous_fraction(version))
    index = next(i for i, (lgg, ambiguous) in enumerate(design) if lgg == (grade == "LGG") and not ambiguous)
    images, seg, case = generate_case(
        index, seed=seed, is_lgg=grade == "LGG", ambiguous=False, spacing=spacing, version=version
    )
    z = int(round(case.tumour_centre_voxel[2]))
    figure = Figure(figsize=(13.0, 3.1))
    axes = figure.subplots(1, 5)
    for ax, image, title in zip(axes, images, TITLES, strict=False):
        plane = image[:, :, z]
        low, high = np.percentile(image[image > 0], (1.0, 99.5))
        ax.imshow(np.ma.masked_equal(_display(plane), 0), cmap=_GRAY, vmin=low, vmax=high, interpolation="nearest")
        ax.set_title(title, fontsize=9)
    flair = images[3][:, :, z]
    low, high = np.percentile(images[3][images[3] > 0], (1.0, 99.5))
    axes[4].imshow(np.ma.masked_equal(_display(flair), 0), cmap=_GRAY, vmin=low, vmax=high, interpolation="nearest")
    colours = ListedColormap([c for _, _, c in LABELS])
    codes = np.select([seg[:, :, z] == k for k, _, _ in LABELS], [0, 1, 2], default=-1)
    axes[4].imshow(
        np.ma.masked_less(_display(codes), 0), cmap=colours, vmin=0, vmax=2, alpha=0.55, interpolation="nearest"
    )
    axes[4].set_title("labels on FLAIR", fontsize=9)
    axes[4].legend(
        handles=[Patch(color=c, label=name) for _, name, c in LABELS], loc="lower right", fontsize=6, framealpha=0.7
    )
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(0.02, 0.5, "R", color="yellow", fontsize=8, transform=ax.transAxes, va="center")
    extra = (
        f", mismatch sign: {'yes' if case.mismatch else 'no'}"
        if getattr(case, "mismatch", False) or grade == "LGG" and version >= 3
        else ""
    )
    phenotype = f", {case.phenotype}" if hasattr(case, "phenotype") else ""
    figure.suptitle(
        f"synthetic cohort v{version}: {subject_id(index)} ({grade}{phenotype}{extra}), {spacing:g} mm, axial slice {z}",
        fontsize=10,
    )
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.84, wspace=0.03)
    return figure


def main(argv=None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default=str(REPO / "docs" / "images"))
    parser.add_argument("--version", type=int, default=GENERATOR_VERSION, choices=(2, 3))
    parser.add_argument("--spacing", type=float, default=2.0)
    args = parser.parse_args(argv)
    paths = []
    for grade in ("LGG", "HGG"):
        path = Path(args.out_dir) / f"synthetic_v{args.version}_{grade}.png"
        paths.append(save_figure(case_figure(grade, args.version, args.spacing), path, dpi=110))
        print(path)
    return paths


if __name__ == "__main__":
    main()
