"""Version 2 of the synthetic cohort: geometric heads, one clear grade cue each (kept selectable, byte for byte).

Each case is a skull-stripped head (a smooth-deformed ellipsoidal brain with white matter, cortical and deep
grey matter, ventricles, sulcal and interhemispheric CSF) imaged in the four BraTS sequences; HGG carries a
necrotic core in an enhancing rim inside wide oedema, LGG a non-enhancing mass with the T2-FLAIR mismatch sign
(``ambiguous`` cases a weaker version of the cue). Every HGG enhances and no unambiguous LGG does, so the
enhancing fraction of the label map alone gives the grade away; version 3
(:mod:`monai_protoshare.data.synthetic_v3`) removes that. The design and its history are in
``docs/synthetic_cohort.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from monai_protoshare.data.cases import SEQUENCES
from monai_protoshare.data.synthetic_common import angular_modulation as _angular_modulation
from monai_protoshare.data.synthetic_common import coarse_shape as _coarse_shape
from monai_protoshare.data.synthetic_common import default_shape, subject_id
from monai_protoshare.data.synthetic_common import smooth_field as _smooth_field
from monai_protoshare.data.synthetic_common import upsample as _upsample

__all__ = ["SyntheticCase", "generate_case_v2"]

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


def _acquire(
    rng: np.random.Generator, grid: _Grid, tissue: np.ndarray, brain: np.ndarray, intensity: np.ndarray
) -> np.ndarray:
    """Images (4, *shape) float32 of the tissue map: per-tissue ``intensity`` (tissues x sequences) times a
    smooth texture, a little partial volume (sigma 0.7 mm), a bias field, then Rician noise and a gain inside the
    brain only (0 outside)."""
    shape, spacing = grid.shape, grid.spacing
    texture = 1 + _TEXTURE[tissue] * _smooth_field(rng, shape, 4.0 / spacing)
    inside = np.flatnonzero(brain)
    images = np.zeros((len(SEQUENCES), math.prod(shape)), dtype=np.float32)
    for c in range(len(SEQUENCES)):
        clean = ndimage.gaussian_filter(intensity[tissue, c] * texture, 0.7 / spacing, truncate=2.0)
        clean = (clean * _bias_field(rng, grid)).ravel()[inside]
        noise = rng.standard_normal((2, inside.size), dtype=np.float32) * np.float32(_NOISE_SIGMA)
        gain = np.float32(rng.uniform(*_GAIN_RANGE))
        images[c, inside] = np.sqrt((clean + noise[0]) ** 2 + noise[1] ** 2) * gain
    return images.reshape(len(SEQUENCES), *shape)


def generate_case_v2(
    index: int,
    *,
    seed: int = 0,
    is_lgg: bool,
    ambiguous: bool,
    spacing: float = 2.0,
    shape: Sequence[int] | None = None,
    contrast_jitter: float = 0.0,
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
    images = _acquire(rng, grid, tissue, brain, intensity)
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
