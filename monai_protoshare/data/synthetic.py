"""A synthetic BraTS-2020-like cohort: same layout, names, dtypes, labels and affine as the real release.

Each case is a skull-stripped head (a smooth-deformed ellipsoidal brain with white matter, cortical and
deep grey matter, ventricles, sulcal and interhemispheric CSF; background exactly 0) imaged in the four
BraTS sequences with their usual tissue contrast: T1 and T1-CE show white matter brighter than grey
matter and CSF dark; T2 shows CSF brightest; FLAIR suppresses CSF (dark) and keeps oedema bright. A
smooth multiplicative bias field, per-sequence scanner gain and Rician noise are added.

**What is learnable, and why.** The grade is carried only by the tumour, as radiologists read it:

* HGG (label 1): a necrotic core (seg 1; dark in T1 and T1-CE, bright in T2) inside a contrast-enhancing
  rim (seg 4; bright in T1-CE only), surrounded by wide, irregular T2/FLAIR-bright oedema (seg 2), with a
  heterogeneous texture.
* LGG (label 0): a non-enhancing, homogeneous mass (seg 1) with the T2-FLAIR mismatch sign of IDH-mutant
  astrocytomas: bright in T2, FLAIR-suppressed inside a thin FLAIR-bright rim of oedema (seg 2); no
  enhancement. (Version 1 of the generator made the mass T2- and FLAIR-bright, which locally looked like HGG
  oedema; models then found little LGG evidence inside the tumour, and the demo's AP for LGG cases varied from
  0.18 to 0.81 over folds.)

About ``ambiguous_fraction`` of each grade carries a *weaker* version of its cue, never none: an
ambiguous HGG has a thin, faint, partial rim and little oedema; an ambiguous LGG has a faint patchy
enhancing spot (seg 4) and more oedema. Tumour position (either hemisphere), size (radius 12-35 mm
including oedema) and lumpy shape are random and have the same distribution in both grades, so size
and position carry no information. Every case, whatever its grade, also holds grade-independent
distractors *outside* the tumour, in random numbers: enhancing vessel-like spots and tubes in T1-CE
(as bright as an HGG rim) and FLAIR-bright periventricular caps and white-matter spots (as bright as
oedema). Hence "any enhancement" or "any FLAIR hyperintensity" anywhere does not predict the grade: a
model must look at the tumour (the enhancing *ring around a fluid core inside oedema*), which is what
makes the activation-precision metric (overlap of the evidence with the whole-tumour mask, seg > 0)
meaningful on this cohort.

**Healthy-tissue contrast and the normalisation shortcut.** Models see each sequence z-scored over the brain,
and the tumour (whose make-up depends on the grade) shifts the brain's mean and spread; with the same
healthy-tissue contrast in every case, the z-scored white-matter intensities alone predict the grade (a
least-squares fit on their four means: AUC 0.87 in sample on the demo cohort; T1-CE alone, whose mean and spread
the HGG rim raises, 0.79), so a model can classify correctly from evidence on healthy tissue.
``contrast_jitter > 0`` scales the healthy tissues' contrast (white and grey matter, CSF, caps, white-matter
spots) per case and per sequence by a factor ``N(1, contrast_jitter)`` drawn independently of the grade, as
scanners and protocols do (0.10 lowered the AUC to 0.76 on a version-1 cohort). The default is 0.

**Layout** (DESIGN §3): ``<out>/BraTS20_Training_NNN/BraTS20_Training_NNN_{t1,t1ce,t2,flair,seg}.nii.gz``
and ``<out>/name_mapping.csv`` with the release's six columns (``NA`` for the unknown ids); sequences
are float32, the segmentation uint8 with labels {0, 1, 2, 4}. The affine is BraTS's LPS one scaled to
the spacing: ``diag(-s, -s, s)`` with origin ``(0, (n_y - 1) s, 0)`` (``s = 1`` gives the release's
``[[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0]]``); the default shape covers the release's
240 x 240 x 155 mm field of view (120 x 120 x 78 at the default 2 mm). ``synthetic_cohort.json`` records
the generation parameters and, per case, the grade, the ambiguity flag and the tumour geometry.

**Determinism.** Case ``i`` draws from its own generator seeded by ``(seed, i)``, so it is identical
whatever the number of cases; the grades follow a Beatty sequence with a seed-dependent phase, so every
prefix of the cohort has ``round(n * lgg_fraction)`` LGG cases (+-1) and 369 cases give exactly 76 LGG.
Files are written atomically with gzip headers free of names and times: same arguments, same bytes.

Example:
    >>> from monai_protoshare.data.synthetic import generate_cohort
    >>> root = generate_cohort("cohort", n_cases=4, seed=0, spacing=6.0)
    >>> sorted(p.name for p in root.iterdir())[:2]
    ['BraTS20_Training_001', 'BraTS20_Training_002']

CLI: ``python -m monai_protoshare.data.synthetic --out DIR --cases N --seed S [--spacing MM]
[--lgg-fraction F] [--ambiguous-fraction F] [--contrast-jitter S] [--shape X Y Z]``.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from monai_protoshare.data.brats import NAME_MAPPING, NAME_MAPPING_COLUMNS, SEQUENCES
from monai_protoshare.io import atomic_path, write_json, write_text

__all__ = [
    "BRATS_FOV_MM",
    "DEFAULT_CONTRAST_JITTER",
    "GENERATOR_VERSION",
    "NAME_MAPPING_COLUMNS",
    "SEQUENCES",
    "SyntheticCase",
    "brats_like_affine",
    "default_shape",
    "generate_case",
    "generate_cohort",
    "subject_id",
]

logger = logging.getLogger(__name__)

#: Field of view of the BraTS-2020 release (240 x 240 x 155 voxels of 1 mm), in mm.
BRATS_FOV_MM = (240.0, 240.0, 155.0)
#: LGG fraction of the release (76 LGG among 369 cases).
BRATS_LGG_FRACTION = 76 / 369

#: Default per-case spread of the healthy tissues' contrast (see "Healthy-tissue contrast" above).
DEFAULT_CONTRAST_JITTER = 0.0
#: Version of the generated images, recorded in ``synthetic_cohort.json``; raised whenever the same arguments
#: write different images (2: the LGG mass shows the T2-FLAIR mismatch sign), so a cohort kept on disk from an
#: earlier version can be recognised and regenerated.
GENERATOR_VERSION = 2

# Tissue codes of the internal tissue map (one row each of the intensity table below).
_BG, _WM, _GM, _CSF, _CAP, _WMH, _VESSEL, _OEDEMA, _NECROSIS, _ENHANCING, _LGG_MASS, _LGG_SPOT, _NONENH_CORE = range(13)
# Mean intensity of each tissue per sequence (T1, T1-CE, T2, FLAIR), relative to white matter in T1.
# Radiological contrast: T1 WM > GM > CSF; T2 CSF brightest; FLAIR CSF dark, oedema/tumour bright;
# T1-CE = T1 except where contrast leaks (enhancing rim, vessels).
_INTENSITY = np.array(
    [
        (0.00, 0.00, 0.00, 0.00),  # background
        (1.00, 1.00, 0.45, 0.60),  # white matter
        (0.72, 0.74, 0.68, 0.82),  # grey matter (cortex, deep nuclei)
        (0.25, 0.25, 1.60, 0.12),  # CSF
        (0.86, 0.88, 0.85, 1.25),  # periventricular cap (FLAIR bright; distractor)
        (0.88, 0.90, 0.90, 1.20),  # white-matter hyperintensity spot (FLAIR bright; distractor)
        (1.00, 1.85, 0.50, 0.70),  # vessel (enhances in T1-CE; distractor)
        (0.62, 0.64, 1.25, 1.35),  # oedema
        (0.35, 0.32, 1.50, 0.80),  # necrotic core
        (0.70, 1.85, 0.95, 1.10),  # enhancing rim
        (0.60, 0.62, 1.55, 0.85),  # LGG non-enhancing mass (T2-FLAIR mismatch: FLAIR suppresses it)
        (0.60, 1.10, 1.25, 1.20),  # LGG faint enhancing spot (ambiguous LGG)
        (0.50, 0.55, 1.30, 1.05),  # non-enhancing part of a partial rim (ambiguous HGG)
    ],
    dtype=np.float32,
)
# Amplitude of the smooth multiplicative texture per tissue: HGG components heterogeneous, LGG homogeneous.
_TEXTURE = np.array([0, 0.03, 0.03, 0.03, 0.03, 0.03, 0.03, 0.10, 0.20, 0.18, 0.03, 0.03, 0.12], dtype=np.float32)
# Seg label of each tissue (BraTS: 1 necrotic/non-enhancing core, 2 oedema, 4 enhancing tumour).
_SEG_LABEL = np.array([0, 0, 0, 0, 0, 0, 0, 2, 1, 4, 1, 4, 1], dtype=np.uint8)
_HEALTHY = [_WM, _GM, _CSF, _CAP, _WMH]  # tissues whose contrast varies per case (contrast_jitter)

_TUMOUR_RADIUS_MM = (12.0, 35.0)  # whole tumour, oedema included
_NOISE_SIGMA = 0.03  # Rician noise sigma, relative to white matter
_BIAS_AMPLITUDE = 0.12  # peak log-amplitude of the bias field
_GAIN_RANGE = (400.0, 1200.0)  # scanner gain per sequence (arbitrary MR units)


@dataclass(frozen=True)
class SyntheticCase:
    """Ground truth of one synthetic case (written to ``synthetic_cohort.json``).

    Attributes:
        subject_id: ``BraTS20_Training_NNN``.
        grade: ``"HGG"`` or ``"LGG"``.
        ambiguous: whether the grade cue is the weaker variant.
        tumour_centre_voxel: centre of the tumour, voxel coordinates.
        tumour_radius_mm: mean radius of the whole tumour (oedema included).
        core_radius_mm: mean radius of the tumour core (HGG: rim + necrosis) or of the LGG mass.
        n_vessels: number of enhancing vessel-like distractors (spots + tubes).
        n_flair_spots: number of FLAIR-bright distractors (periventricular caps + white-matter spots).
    """

    subject_id: str
    grade: str
    ambiguous: bool
    tumour_centre_voxel: tuple[float, float, float]
    tumour_radius_mm: float
    core_radius_mm: float
    n_vessels: int
    n_flair_spots: int


def subject_id(index: int, width: int = 3) -> str:
    """BraTS-2020 subject id of the 0-based case ``index`` (``0 -> BraTS20_Training_001``)."""
    return f"BraTS20_Training_{index + 1:0{width}d}"


def default_shape(spacing: float) -> tuple[int, int, int]:
    """Grid covering the release's 240 x 240 x 155 mm field of view at ``spacing`` mm (2 mm: 120 x 120 x 78)."""
    return tuple(int(math.ceil(fov / spacing - 1e-6)) for fov in BRATS_FOV_MM)  # type: ignore[return-value]


def brats_like_affine(spacing: float, shape: Sequence[int]) -> np.ndarray:
    """BraTS's LPS affine scaled to ``spacing``: ``diag(-s, -s, s)``, origin ``(0, (n_y - 1) s, 0)``.

    At 1 mm and 240 x 240 x 155 this is the release's affine exactly (axis codes L, P, S).
    """
    affine = np.diag([-spacing, -spacing, spacing, 1.0])
    affine[1, 3] = (shape[1] - 1) * spacing
    return affine


def _grade_is_lgg(index: int, lgg_fraction: float, phase: float) -> bool:
    """Beatty sequence: case ``index`` is LGG when ``floor((i + 1) f + phase)`` steps up."""
    return math.floor((index + 1) * lgg_fraction + phase) > math.floor(index * lgg_fraction + phase)


def _upsample(coarse: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Separable linear interpolation of a coarse 3-D array onto ``shape`` (corner samples aligned)."""
    out = coarse
    for axis, n in enumerate(shape):
        k = coarse.shape[axis]
        position = np.linspace(0, k - 1, n)
        low = np.minimum(position.astype(np.intp), k - 2)
        weight = (position - low).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
        out = np.take(out, low, axis=axis) * (1 - weight) + np.take(out, low + 1, axis=axis) * weight
    return out


def _coarse_shape(shape: Sequence[int], correlation_vox: float) -> tuple[int, ...]:
    return tuple(max(2, int(math.ceil(n / max(correlation_vox, 1.0))) + 1) for n in shape)


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], correlation_vox: float) -> np.ndarray:
    """Smooth random field of about unit standard deviation (linear upsampling of coarse white noise)."""
    field = _upsample(rng.standard_normal(_coarse_shape(shape, correlation_vox), dtype=np.float32), shape)
    return field / max(float(field.std()), 1e-6)


def _angular_modulation(rng: np.random.Generator, amplitude: float, n_terms: int = 4):
    """Random smooth function of direction, ``m(u) = sum_k a_k cos(f_k w_k.u + phi_k)``, of peak ``amplitude``."""
    directions = rng.standard_normal((n_terms, 3))
    directions = (directions / np.linalg.norm(directions, axis=1, keepdims=True)).astype(np.float32)
    frequencies = rng.uniform(1.0, 3.5, n_terms).astype(np.float32)
    phases = rng.uniform(0, 2 * np.pi, n_terms).astype(np.float32)
    weights = rng.uniform(0.5, 1.0, n_terms)
    weights = (weights * amplitude / weights.sum()).astype(np.float32)

    def modulation(ux: np.ndarray, uy: np.ndarray, uz: np.ndarray) -> np.ndarray:
        out = np.zeros(np.broadcast_shapes(ux.shape, uy.shape, uz.shape), dtype=np.float32)
        for (dx, dy, dz), f, p, w in zip(directions, frequencies, phases, weights, strict=True):
            out += w * np.cos(f * (dx * ux + dy * uy + dz * uz) + p)
        return out

    return modulation


class _Grid:
    """Voxel grid of one case: physical coordinates (mm) relative to the brain centre, as sparse 1-D axes.

    ``x`` runs along voxel axis 0 (left-right), ``y`` along axis 1 (anterior-posterior) and ``z`` along
    axis 2 (inferior-superior); BraTS images are atlas-aligned, so the head frame is the voxel frame.
    """

    def __init__(self, shape: Sequence[int], spacing: float, rng: np.random.Generator):
        self.shape = tuple(shape)
        self.spacing = spacing
        self.centre = np.array([(n - 1) / 2 for n in shape]) + rng.uniform(-2.0, 2.0, 3) / spacing
        self.x, self.y, self.z = self.axes([np.arange(n, dtype=np.float32) for n in shape])

    def axes(self, positions: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Head-frame coordinates (mm) of voxel ``positions`` along each axis, as broadcastable arrays."""
        out = []
        for axis, (p, c) in enumerate(zip(positions, self.centre, strict=True)):
            view = [1, 1, 1]
            view[axis] = -1
            out.append(((p - c) * self.spacing).astype(np.float32).reshape(view))
        return tuple(out)  # type: ignore[return-value]

    def to_voxel(self, point_mm: np.ndarray) -> np.ndarray:
        """Head-frame point (mm) -> voxel coordinates."""
        return point_mm / self.spacing + self.centre

    def box(self, centre_mm: np.ndarray, radius_mm: float) -> tuple[slice, slice, slice]:
        """Voxel slices of the axis-aligned box around a ball (mm), clipped to the grid."""
        centre = self.to_voxel(centre_mm)
        half = radius_mm / self.spacing + 2
        return tuple(
            slice(max(0, int(math.floor(c - half))), min(n, int(math.ceil(c + half)) + 1))
            for c, n in zip(centre, self.shape, strict=True)
        )  # type: ignore[return-value]

    def local(self, box: tuple[slice, slice, slice], centre_mm: np.ndarray):
        """Offsets (mm) of the voxels of ``box`` from ``centre_mm``, as three broadcastable arrays."""
        return (
            self.x[box[0]] - np.float32(centre_mm[0]),
            self.y[:, box[1]] - np.float32(centre_mm[1]),
            self.z[:, :, box[2]] - np.float32(centre_mm[2]),
        )


def _ellipsoid(grid: _Grid, centre: Sequence[float], semi_axes: Sequence[float]) -> np.ndarray:
    """Boolean ellipsoid (head frame, mm) on the full grid."""
    (cx, cy, cz), (a, b, c) = centre, semi_axes
    return ((grid.x - cx) / a) ** 2 + ((grid.y - cy) / b) ** 2 + ((grid.z - cz) / c) ** 2 < 1


def _paint_ball(tissue: np.ndarray, grid: _Grid, centre: np.ndarray, radius: float, code: int, where: np.ndarray):
    """Set ``tissue`` to ``code`` in a ball (mm) wherever ``where`` holds."""
    box = grid.box(centre, radius)
    dx, dy, dz = grid.local(box, centre)
    inside = (dx**2 + dy**2 + dz**2 < radius**2) & where[box]
    tissue[box][inside] = code


def _paint_tube(tissue: np.ndarray, grid: _Grid, start: np.ndarray, end: np.ndarray, radius: float, where):
    """Set ``tissue`` to vessel in a straight tube of ``radius`` mm from ``start`` to ``end`` (mm)."""
    mid, half = (start + end) / 2, np.linalg.norm(end - start) / 2
    box = grid.box(mid, half + radius)
    dx, dy, dz = grid.local(box, start)
    axis = ((end - start) / (2 * half)).astype(np.float32)
    t = np.clip(dx * axis[0] + dy * axis[1] + dz * axis[2], 0, 2 * half)
    dist2 = (dx - t * axis[0]) ** 2 + (dy - t * axis[1]) ** 2 + (dz - t * axis[2]) ** 2
    tissue[box][(dist2 < radius**2) & where[box]] = _VESSEL


def _brain(grid: _Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tissue map of a healthy brain; returns (tissue, normalised brain radius, ventricle parameters)."""
    semi = np.array([rng.uniform(62, 70), rng.uniform(78, 88), rng.uniform(56, 63)], dtype=np.float32)
    nx, ny, nz = grid.x / semi[0], grid.y / semi[1], grid.z / semi[2]
    rho = np.sqrt(nx**2 + ny**2 + nz**2)
    # The outline's radial deformation depends on direction only: evaluate it on a coarse grid, then upsample.
    coarse_shape = _coarse_shape(grid.shape, 4.0)
    cx, cy, cz = grid.axes(
        [np.linspace(0, n - 1, c, dtype=np.float32) for n, c in zip(grid.shape, coarse_shape, strict=True)]
    )
    cx, cy, cz = cx / semi[0], cy / semi[1], cz / semi[2]
    inv = 1 / np.maximum(np.sqrt(cx**2 + cy**2 + cz**2), 1e-3)
    outline = 1 + _upsample(_angular_modulation(rng, 0.08, 5)(cx * inv, cy * inv, cz * inv), grid.shape)
    rho_n = rho / outline  # < 1 inside the brain, ~1 on its deformed outline
    brain = rho_n < 1
    gyri = _smooth_field(rng, grid.shape, 6.0 / grid.spacing)
    tissue = np.where(brain, _WM, _BG).astype(np.uint8)
    tissue[brain & (rho_n > 0.80 + 0.05 * gyri)] = _GM  # cortical ribbon with a wavy grey-white boundary
    tissue[brain & (((rho_n > 0.90) & (gyri > 0.9)) | (rho_n > 0.975))] = _CSF  # sulci and surface CSF
    fissure = (np.abs(grid.x) < max(1.0, 0.5 * grid.spacing)) & (grid.z > -8) & (rho_n > 0.35)
    tissue[brain & fissure] = _CSF
    # Deep grey nuclei and lateral ventricles, mirrored about the midline.
    vent = np.array([rng.uniform(5, 9), rng.uniform(18, 25), rng.uniform(6, 10)], dtype=np.float32)
    vent_x, vent_z = rng.uniform(7, 10), rng.uniform(4, 12)
    for side in (-1, 1):
        tissue[_ellipsoid(grid, (side * (vent_x + 14), 2, vent_z - 10), (9, 13, 10))] = _GM
        tissue[_ellipsoid(grid, (side * vent_x, 0, vent_z), vent)] = _CSF
    return tissue, rho_n, np.array([vent_x, vent_z, *vent])


def _sample_in_brain(
    rng: np.random.Generator, rho_n: np.ndarray, grid: _Grid, max_rho: float, avoid=None
) -> np.ndarray:
    """Random head-frame point (mm) with normalised brain radius < ``max_rho``, optionally away from a ball."""
    for _ in range(200):
        voxel = np.array([rng.uniform(0, n - 1) for n in grid.shape])
        point = (voxel - grid.centre) * grid.spacing
        if rho_n[tuple(np.round(voxel).astype(int))] >= max_rho:
            continue
        if avoid is None or np.linalg.norm(point - avoid[0]) > avoid[1]:
            return point.astype(np.float32)
    return point.astype(np.float32)  # practically unreachable: the brain fills ~15 % of the grid


def _tumour(tissue, grid, rng, rho_n, is_lgg, ambiguous) -> tuple[np.ndarray, float, float]:
    """Paint the tumour into ``tissue``; returns (centre mm, whole-tumour radius, core radius)."""
    radius = rng.uniform(*_TUMOUR_RADIUS_MM)
    side = rng.choice((-1.0, 1.0))
    for _ in range(200):  # either hemisphere, away from the midline, centre well inside the brain
        centre = _sample_in_brain(rng, rho_n, grid, 0.6)
        if side * centre[0] > 10:
            break
    if is_lgg:
        core = radius / (rng.uniform(1.3, 1.5) if ambiguous else rng.uniform(1.05, 1.18))
    else:
        core = radius * (rng.uniform(0.62, 0.78) if ambiguous else rng.uniform(0.42, 0.62))
    box = grid.box(centre, radius * 1.45)
    dx, dy, dz = grid.local(box, centre)
    r = np.sqrt(dx**2 + dy**2 + dz**2)
    inv = 1 / np.maximum(r, 1e-3)
    ux, uy, uz = dx * inv, dy * inv, dz * inv
    shape_core = 1 + _angular_modulation(rng, 0.18)(ux, uy, uz)  # lumpy core
    shape_whole = 1 + _angular_modulation(rng, 0.30, 6)(ux, uy, uz)  # irregular, finger-like oedema
    fingers = _smooth_field(rng, r.shape, 5.0 / grid.spacing)
    in_brain = tissue[box] != _BG
    whole = (r / (radius * shape_whole) - 0.06 * fingers < 1) & in_brain
    inner = (r < core * shape_core) & in_brain
    local = tissue[box]
    local[whole] = _OEDEMA
    if is_lgg:
        local[inner] = _LGG_MASS
        if ambiguous:  # a faint patchy enhancing spot inside the mass
            spot_r = rng.uniform(2.5, 4.5)
            offset = rng.standard_normal(3) * 0.35 * core
            spot = (dx - offset[0]) ** 2 + (dy - offset[1]) ** 2 + (dz - offset[2]) ** 2 < spot_r**2
            local[spot & inner & (fingers > -0.5)] = _LGG_SPOT
        return centre, radius, core
    rim = rng.uniform(3.0, 4.0) if ambiguous else rng.uniform(4.0, 7.0)
    rim = min(rim, 0.55 * core)
    necrosis = (r < (core - rim) * shape_core) & in_brain
    ring = inner & ~necrosis
    if ambiguous:  # thin, partial rim: enhancement over part of the ring only
        sector = _angular_modulation(rng, 1.0, 3)(ux, uy, uz)
        enhancing = sector > np.quantile(sector[ring], rng.uniform(0.2, 0.45)) if ring.any() else ring
        local[ring] = _NONENH_CORE
        local[ring & enhancing] = _ENHANCING
    else:
        local[ring] = _ENHANCING
    local[necrosis] = _NECROSIS
    return centre, radius, core


def _distractors(tissue, grid, rng, rho_n, vent_params, tumour_centre, tumour_radius) -> tuple[int, int]:
    """Grade-independent enhancing vessels and FLAIR-bright spots outside the tumour; returns their counts."""
    healthy = (tissue != _BG) & (_SEG_LABEL[tissue] == 0)
    avoid = (tumour_centre, 1.35 * tumour_radius + 6.0)
    n_spots, n_tubes = int(rng.integers(2, 8)), int(rng.integers(1, 5))
    for _ in range(n_spots):
        _paint_ball(
            tissue, grid, _sample_in_brain(rng, rho_n, grid, 0.95, avoid), rng.uniform(2.0, 3.5), _VESSEL, healthy
        )
    for _ in range(n_tubes):
        for _ in range(50):  # a tube whose whole length stays away from the tumour
            start = _sample_in_brain(rng, rho_n, grid, 0.9, avoid)
            direction = rng.standard_normal(3)
            end = (start + direction / np.linalg.norm(direction) * rng.uniform(15, 40)).astype(np.float32)
            ts = np.linspace(0, 1, 9)[:, None]
            if np.all(np.linalg.norm(start + ts * (end - start) - tumour_centre, axis=1) > avoid[1]):
                break
        _paint_tube(tissue, grid, start, end, rng.uniform(1.3, 2.2), healthy)
    # Periventricular caps at the ventricles' frontal and occipital horns, each present with probability 0.6.
    vent_x, vent_z, _, vent_ap, _ = vent_params
    n_caps = 0
    for side in (-1, 1):
        for end in (-1, 1):
            centre = np.array([side * vent_x, end * (vent_ap + 1.0), vent_z], dtype=np.float32)
            if rng.random() < 0.6 and np.linalg.norm(centre - tumour_centre) > avoid[1]:
                where = healthy & (tissue != _CSF)
                _paint_ball(tissue, grid, centre, rng.uniform(5.0, 8.0), _CAP, where)
                n_caps += 1
    n_wmh = int(rng.integers(1, 6))
    for _ in range(n_wmh):
        _paint_ball(tissue, grid, _sample_in_brain(rng, rho_n, grid, 0.75, avoid), rng.uniform(2.0, 4.0), _WMH, healthy)
    return n_spots + n_tubes, n_caps + n_wmh


def _bias_field(rng: np.random.Generator, grid: _Grid) -> np.ndarray:
    """Smooth multiplicative bias field: exp of a random separable quadratic polynomial (peak ~ +-12 %)."""
    field = np.float32(1.0)
    for axis in (grid.x, grid.y, grid.z):
        u = axis / np.float32(100.0)
        a, b = (rng.uniform(-1, 1, 2) * _BIAS_AMPLITUDE / 2).astype(np.float32)
        field = field * np.exp(a * u + b * u**2)
    return field


def generate_case(
    index: int,
    *,
    seed: int = 0,
    is_lgg: bool,
    ambiguous: bool,
    spacing: float = 2.0,
    shape: Sequence[int] | None = None,
    contrast_jitter: float = DEFAULT_CONTRAST_JITTER,
) -> tuple[np.ndarray, np.ndarray, SyntheticCase]:
    """Generate one case in memory.

    Args:
        index: 0-based case index; with ``seed`` it seeds the case's own generator.
        seed: cohort seed.
        is_lgg: grade (LGG when true, HGG otherwise).
        ambiguous: draw the weaker variant of the grade cue.
        spacing: isotropic voxel size in mm.
        shape: grid shape; defaults to the release's field of view at ``spacing`` (:func:`default_shape`).
        contrast_jitter: standard deviation of the per-case, per-sequence factor on the healthy tissues'
            contrast, drawn from its own generator seeded by ``(seed, index, 2)`` so that everything else in
            the case is the same for every value (0 switches it off).

    Returns:
        ``(images, seg, case)``: float32 images (4, H, W, D) in the order T1, T1-CE, T2, FLAIR, zero outside
        the brain; uint8 segmentation (H, W, D) with labels {0, 1, 2, 4}; the case's ground truth.
    """
    shape = tuple(int(n) for n in (default_shape(spacing) if shape is None else shape))
    rng = np.random.default_rng([seed, index])
    grid = _Grid(shape, spacing, rng)
    tissue, rho_n, vent = _brain(grid, rng)
    centre, radius, core = _tumour(tissue, grid, rng, rho_n, is_lgg, ambiguous)
    n_vessels, n_flair = _distractors(tissue, grid, rng, rho_n, vent, centre, radius)

    brain = tissue != _BG
    intensity = _INTENSITY * rng.uniform(0.95, 1.05, _INTENSITY.shape).astype(np.float32)
    contrast = np.random.default_rng([seed, index, 2]).normal(1.0, contrast_jitter, (len(_HEALTHY), len(SEQUENCES)))
    intensity[_HEALTHY] *= np.clip(contrast, 0.5, 1.5).astype(np.float32)
    # Each tumour enhances to its own degree: HGG rims strongly (ambiguous ones faintly), LGG spots faintest.
    intensity[_ENHANCING, 1] = rng.uniform(1.40, 1.55) if ambiguous else rng.uniform(1.7, 2.0)
    intensity[_LGG_SPOT, 1] = rng.uniform(1.0, 1.2)
    texture = 1 + _TEXTURE[tissue] * _smooth_field(rng, shape, 4.0 / spacing)
    inside = np.flatnonzero(brain)
    images = np.zeros((len(SEQUENCES), math.prod(shape)), dtype=np.float32)
    for c in range(len(SEQUENCES)):
        # A little partial volume (sigma 0.7 mm), the bias field, then Rician noise inside the brain only.
        clean = ndimage.gaussian_filter(intensity[tissue, c] * texture, 0.7 / spacing, truncate=2.0)
        clean = (clean * _bias_field(rng, grid)).ravel()[inside]
        noise = rng.standard_normal((2, inside.size), dtype=np.float32) * np.float32(_NOISE_SIGMA)
        gain = np.float32(rng.uniform(*_GAIN_RANGE))
        images[c, inside] = np.sqrt((clean + noise[0]) ** 2 + noise[1] ** 2) * gain
    images = images.reshape(len(SEQUENCES), *shape)
    seg = _SEG_LABEL[tissue]
    case = SyntheticCase(
        subject_id=subject_id(index),
        grade="LGG" if is_lgg else "HGG",
        ambiguous=bool(ambiguous),
        tumour_centre_voxel=tuple(round(float(v), 2) for v in grid.to_voxel(centre)),
        tumour_radius_mm=round(float(radius), 2),
        core_radius_mm=round(float(core), 2),
        n_vessels=n_vessels,
        n_flair_spots=n_flair,
    )
    return images, seg, case


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(image, tmp)


def generate_cohort(
    out_dir: str | Path,
    n_cases: int = 20,
    seed: int = 0,
    lgg_fraction: float = BRATS_LGG_FRACTION,
    spacing: float = 2.0,
    shape: Sequence[int] | None = None,
    ambiguous_fraction: float = 0.15,
    contrast_jitter: float = DEFAULT_CONTRAST_JITTER,
    progress: bool = True,
) -> Path:
    """Write a synthetic cohort in the BraTS-2020 layout (see the module docstring) and return ``out_dir``.

    Args:
        out_dir: output folder (created). Existing case folders of a larger earlier cohort are an error.
        n_cases: number of cases.
        seed: cohort seed; case ``i`` is the same for every ``n_cases``.
        lgg_fraction: fraction of LGG cases (default the release's 76/369).
        spacing: isotropic voxel size in mm (default 2 mm; the release is 1 mm).
        shape: grid shape; defaults to the release's 240 x 240 x 155 mm field of view at ``spacing``.
        ambiguous_fraction: probability that a case carries the weaker version of its grade cue.
        contrast_jitter: per-case spread of the healthy tissues' contrast (:func:`generate_case`).
        progress: show a tqdm progress bar.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: for a non-positive ``n_cases`` or ``spacing``, fractions outside [0, 1], a shape that
            is not three positive integers, or stale case folders in ``out_dir``.
    """
    if n_cases < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}.")
    if spacing <= 0:
        raise ValueError(f"spacing must be > 0 mm, got {spacing}.")
    for name, value in (("lgg_fraction", lgg_fraction), ("ambiguous_fraction", ambiguous_fraction)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {value}.")
    if not 0 <= contrast_jitter <= 0.5:
        raise ValueError(f"contrast_jitter must be in [0, 0.5], got {contrast_jitter}.")
    shape = default_shape(spacing) if shape is None else tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three integers >= 8, got {shape}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(n_cases)))
    ids = [subject_id(i, width) for i in range(n_cases)]
    stale = sorted(p.name for p in out.glob("BraTS20_Training_*") if p.is_dir() and p.name not in set(ids))
    if stale:
        raise ValueError(
            f"out_dir {out} already holds case folders outside the {n_cases} requested ({', '.join(stale[:5])}"
            f"{', ...' if len(stale) > 5 else ''}); use an empty folder or a larger n_cases."
        )
    phase = float(np.random.default_rng([seed]).uniform())
    affine = brats_like_affine(spacing, shape)
    cases, start = [], time.perf_counter()
    for i in tqdm(range(n_cases), desc="synthetic cohort", unit="case", disable=not progress):
        is_lgg = _grade_is_lgg(i, lgg_fraction, phase)
        ambiguous = bool(np.random.default_rng([seed, i, 1]).random() < ambiguous_fraction)
        images, seg, case = generate_case(
            i,
            seed=seed,
            is_lgg=is_lgg,
            ambiguous=ambiguous,
            spacing=spacing,
            shape=shape,
            contrast_jitter=contrast_jitter,
        )
        case = SyntheticCase(**{**asdict(case), "subject_id": ids[i]})
        folder = out / ids[i]
        for c, sequence in enumerate(SEQUENCES):
            _save_nifti(images[c], affine, folder / f"{ids[i]}_{sequence}.nii.gz")
        _save_nifti(seg, affine, folder / f"{ids[i]}_seg.nii.gz")
        cases.append(case)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(NAME_MAPPING_COLUMNS)
    writer.writerows([c.grade, "NA", "NA", "NA", "NA", c.subject_id] for c in cases)
    write_text(out / NAME_MAPPING, buffer.getvalue())
    params = {"n_cases": n_cases, "seed": seed, "lgg_fraction": lgg_fraction, "spacing": spacing}
    params |= {"shape": list(shape), "ambiguous_fraction": ambiguous_fraction, "contrast_jitter": contrast_jitter}
    header = {"generator": __spec__.name, "version": GENERATOR_VERSION, **params}  # __spec__: right under -m too
    write_json(out / "synthetic_cohort.json", {**header, "cases": [asdict(c) for c in cases]})
    n_lgg = sum(c.grade == "LGG" for c in cases)
    logger.info(
        "Wrote %d synthetic cases (%d LGG, %d HGG) to %s in %.1f s.",
        n_cases,
        n_lgg,
        n_cases - n_lgg,
        out,
        time.perf_counter() - start,
    )
    return out


def main(argv: Sequence[str] | None = None) -> Path:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Write a synthetic BraTS-2020-like cohort.")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--cases", type=int, default=20, help="number of cases (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    parser.add_argument("--spacing", type=float, default=2.0, help="voxel size in mm (default 2)")
    parser.add_argument("--lgg-fraction", type=float, default=BRATS_LGG_FRACTION, help="default 76/369")
    parser.add_argument("--ambiguous-fraction", type=float, default=0.15, help="default 0.15")
    parser.add_argument(
        "--contrast-jitter", type=float, default=DEFAULT_CONTRAST_JITTER, help="healthy-tissue contrast spread"
    )
    parser.add_argument("--shape", type=int, nargs=3, default=None, help="grid shape (default: BraTS field of view)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return generate_cohort(
        args.out,
        n_cases=args.cases,
        seed=args.seed,
        lgg_fraction=args.lgg_fraction,
        spacing=args.spacing,
        shape=args.shape,
        ambiguous_fraction=args.ambiguous_fraction,
        contrast_jitter=args.contrast_jitter,
    )


if __name__ == "__main__":
    main()
