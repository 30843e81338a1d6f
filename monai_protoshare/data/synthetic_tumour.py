"""Version 3's tumours: irregular, grown mostly in white matter, pushing the tissue around them.

:func:`plan_tumour` draws a tumour's phenotype and size from the grade (the only grade-dependent draws of a
case); :func:`tumour_maps` turns the plan into soft compartment maps (0-1, for partial volume) and labels on a
box of the case grid, from irregular potentials (an angular modulation of the radius plus smooth noise) that
favour white matter (the whole tumour, oedema included, spreads along it and spares cortex and CSF).

Phenotypes (``docs/synthetic_cohort.md`` has the numbers and the reasons):

* HGG ``ring``: a necrotic core (label 1) inside an irregular enhancing rim (label 4) inside oedema (label 2);
* HGG ``non-enhancing`` (``ambiguous``): a heterogeneous non-enhancing core (label 1) without a clear rim;
* LGG ``non-enhancing``: a homogeneous T2-bright mass (label 1) with a thinner oedema rim; the T2-FLAIR
  mismatch sign (the mass FLAIR-suppressed) in part of them;
* LGG ``faint`` (``ambiguous``): the same with one or two small faintly enhancing foci (label 4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from monai_protoshare.data.synthetic_anatomy import Push
from monai_protoshare.data.synthetic_common import angular_modulation, smooth_field

__all__ = ["MISMATCH_PROBABILITY", "TumourMaps", "TumourPlan", "plan_tumour", "tumour_box", "tumour_maps"]

#: Probability that a (non-ambiguous) LGG mass shows the T2-FLAIR mismatch sign.
MISMATCH_PROBABILITY = 0.35


@dataclass(frozen=True)
class TumourPlan:
    """The tumour of one case (head-frame mm).

    Attributes:
        is_lgg: the grade (LGG when true).
        phenotype: ``ring``, ``non-enhancing`` or ``faint`` (see the module docstring).
        mismatch: LGG mass FLAIR-suppressed (T2-FLAIR mismatch sign).
        centre_mm: centre, case head frame.
        radius_mm: mean radius of the whole tumour, oedema included, before its spread along white matter.
        core_radius_mm: mean radius of the tumour core (HGG: rim and necrosis; LGG: the mass).
        necrosis_ratio: radius of the necrosis over that of the core (HGG ``ring``; 0 otherwise).
        push: the mass effect.
    """

    is_lgg: bool
    phenotype: str
    mismatch: bool
    centre_mm: np.ndarray
    radius_mm: float
    core_radius_mm: float
    necrosis_ratio: float
    push: Push


def plan_tumour(rng: np.random.Generator, centre_mm: np.ndarray, is_lgg: bool, ambiguous: bool) -> TumourPlan:
    """Draw the phenotype, size and mass effect of a tumour centred at ``centre_mm``.

    The whole tumour's size has one distribution for both grades; the core's share of it, the necrosis and the
    enhancement differ by grade, with overlapping ranges (no label statistic alone gives the grade away).
    """
    radius = rng.uniform(17.0, 34.0)
    if is_lgg:
        phenotype = "faint" if ambiguous else "non-enhancing"
        core = radius * rng.uniform(0.40, 0.90)
        necrosis = 0.0
    else:
        phenotype = "non-enhancing" if ambiguous else "ring"
        core = radius * rng.uniform(0.45, 0.85)
        necrosis = rng.uniform(0.30, 0.90) if phenotype == "ring" else 0.0
    mismatch = bool(is_lgg and rng.random() < MISMATCH_PROBABILITY)
    push = Push(np.asarray(centre_mm, dtype=float), rng.uniform(0.15, 0.45), core * rng.uniform(1.0, 1.5))
    return TumourPlan(is_lgg, phenotype, mismatch, np.asarray(centre_mm, dtype=float), radius, core, necrosis, push)


@dataclass(frozen=True)
class TumourMaps:
    """Soft compartment maps (float32, 0-1) and labels (uint8) on ``box`` of the case grid.

    ``whole``: oedema and everything inside it; ``core``: the tumour core; ``necrosis``: the necrotic core;
    ``enhancing``: the enhancing rim (HGG ``ring``) or the faint foci (LGG ``faint``); ``texture``: unit smooth
    noise for the compartments' heterogeneity.
    """

    box: tuple[slice, slice, slice]
    whole: np.ndarray
    core: np.ndarray
    necrosis: np.ndarray
    enhancing: np.ndarray
    texture: np.ndarray
    seg: np.ndarray


def _ramp(signed_mm: np.ndarray, width: float) -> np.ndarray:
    """Soft membership of a region from its signed distance (mm, > 0 inside): 0.5 on the border."""
    return np.clip(np.float32(0.5) + signed_mm / np.float32(width), 0.0, 1.0).astype(np.float32)


def _directions(d: Sequence[np.ndarray]) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Distance to the tumour centre (mm) and the unit direction (three arrays) of each voxel's offset ``d``."""
    r = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2)
    inv = 1 / np.maximum(r, np.float32(1e-3))
    return r, (d[0] * inv, d[1] * inv, d[2] * inv)


def tumour_maps(
    plan: TumourPlan,
    rng: np.random.Generator,
    box: tuple[slice, slice, slice],
    d: Sequence[np.ndarray],
    tau: np.ndarray,
    brain: np.ndarray,
    lateral: np.ndarray,
    spacing: float,
) -> TumourMaps:
    """Compartments of ``plan`` on ``box``.

    Args:
        plan: the tumour.
        rng: the case's generator.
        box: voxel box of the case grid around the tumour.
        d: head-frame offsets (mm) of the box's voxels from the tumour centre, three broadcastable arrays.
        tau: tissue coordinate of the (pushed) healthy anatomy on the box (0 CSF, 1 grey, 2 white matter).
        brain: brain mask on the box.
        lateral: signed distance (mm) to the mid-sagittal plane on the box; the falx keeps the tumour on its side.
        spacing: voxel size (mm); the soft borders are one voxel wide (at least 1.5 mm).
    """
    shape = tau.shape
    width = max(spacing, 1.5)
    r, u = _directions(d)
    white = np.clip(tau - 1, 0, 1)
    csf = np.clip(1 - tau, 0, 1)
    side = 1.0 if float(lateral[np.unravel_index(np.argmin(r), r.shape)]) >= 0 else -1.0  # the centre's side
    falx = np.float32(1.5) * np.clip(-np.float32(side) * lateral / np.float32(4.0), 0, 1)  # beyond the midline
    noise_corr = 7.0 / spacing
    # Core: a lumpy ball, a little drawn towards white matter.
    lobes = 1 + angular_modulation(rng, rng.uniform(0.15, 0.35), 5)(*u)
    rho = (
        r / (np.float32(plan.core_radius_mm) * lobes)
        - 0.10 * smooth_field(rng, shape, noise_corr)
        - 0.1 * (white - 0.5)
        + 0.5 * falx
    )
    core_mm = (1 - rho) * np.float32(plan.core_radius_mm)
    core = _ramp(core_mm, width) * brain
    # Whole tumour: wider, spreading along white matter (finger-like), sparing grey matter and CSF.
    spread = 1 + angular_modulation(rng, rng.uniform(0.2, 0.4), 6)(*u)
    rho = r / (np.float32(plan.radius_mm) * spread) - 0.15 * smooth_field(rng, shape, noise_corr)
    rho = rho - 0.45 * (white - 0.5) + 0.6 * np.maximum(csf - 0.5, 0) + falx
    whole = np.maximum(_ramp((1 - rho) * np.float32(plan.radius_mm), width), core) * brain
    necrosis, enhancing = _inner_compartments(plan, rng, r, u, d, core, core_mm, brain, width, spacing)
    texture = smooth_field(rng, shape, 4.0 / spacing)
    return TumourMaps(box, whole, core, necrosis, enhancing, texture, _labels(whole, core, necrosis, enhancing, brain))


def _inner_compartments(
    plan: TumourPlan,
    rng: np.random.Generator,
    r: np.ndarray,
    u: tuple[np.ndarray, ...],
    d: Sequence[np.ndarray],
    core: np.ndarray,
    core_mm: np.ndarray,
    brain: np.ndarray,
    width: float,
    spacing: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Necrosis and enhancement inside the core: HGG ``ring``, a lumpy necrotic ball inside a rim at least 2 mm
    thick; LGG ``faint``, one or two small enhancing foci; none for the ``non-enhancing`` phenotypes.

    Args:
        r, u: distance (mm) to the tumour centre and unit directions, from :func:`_directions`.
        core, core_mm: the core's soft map and signed distance (mm, > 0 inside) to its border.
        The others as in :func:`tumour_maps`.
    """
    shape = core.shape
    necrosis = np.zeros(shape, np.float32)
    enhancing = np.zeros(shape, np.float32)
    if plan.phenotype == "ring":
        radius = plan.necrosis_ratio * plan.core_radius_mm
        holes = 1 + angular_modulation(rng, 0.2, 4)(*u)
        rho = r / (np.float32(radius) * holes) - 0.12 * smooth_field(rng, shape, 7.0 / spacing)
        rim = np.float32(max(2.0, 0.6 * spacing))  # the rim stays at least this thick
        necrosis = np.minimum(_ramp((1 - rho) * np.float32(radius), width), _ramp(core_mm - rim, width)) * brain
        enhancing = np.clip(core - necrosis, 0, 1)
    elif plan.phenotype == "faint":
        for _ in range(int(rng.integers(1, 3))):
            offset = rng.standard_normal(3) * 0.3 * plan.core_radius_mm
            size = rng.uniform(3.5, 6.5)
            dist = np.sqrt(sum((d[k] - np.float32(offset[k])) ** 2 for k in range(3)))
            enhancing = np.maximum(enhancing, _ramp(np.float32(size) - dist, width))
        enhancing = np.minimum(enhancing, core)
    return necrosis, enhancing


def _labels(
    whole: np.ndarray, core: np.ndarray, necrosis: np.ndarray, enhancing: np.ndarray, brain: np.ndarray
) -> np.ndarray:
    """BraTS labels (uint8) where a compartment's membership passes 0.5, inside the brain: 2 oedema, 1 core and
    necrosis, 4 enhancing."""
    seg = np.where(whole >= 0.5, 2, 0).astype(np.uint8)
    seg[core >= 0.5] = 1
    seg[enhancing >= 0.5] = 4
    seg[necrosis >= 0.5] = 1
    seg[brain < 0.5] = 0
    return seg


def tumour_box(
    centre_voxel: np.ndarray, radius_mm: float, spacing: float, within: Sequence[slice]
) -> tuple[slice, slice, slice]:
    """Voxel box around the tumour (its whole extent, with room for the spread along white matter), inside
    the box ``within``."""
    half = 1.9 * radius_mm / spacing + 2
    return tuple(
        slice(
            min(max(w.start, int(math.floor(c - half))), w.stop - 1),
            max(w.start + 1, min(w.stop, int(math.ceil(c + half)) + 1)),
        )
        for c, w in zip(centre_voxel, within, strict=True)
    )  # type: ignore[return-value]
