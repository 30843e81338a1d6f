"""Version 3 of the synthetic cohort: SRI24 anatomy warped per case, irregular tumours with mass effect, no shortcut.

One case: the atlas anatomy through a random :class:`~monai_protoshare.data.synthetic_anatomy.Warp` and the
tumour's push (:mod:`~monai_protoshare.data.synthetic_anatomy`); the tumour's compartments
(:mod:`~monai_protoshare.data.synthetic_tumour`); four contrasts from tissue-specific intensities with a
per-case jitter; grade-independent distractors outside the tumour (enhancing vessels, FLAIR-bright
white-matter spots); a smooth bias field, a gain and Rician noise per sequence. Only the tumour's phenotype and
proportions are drawn from the grade: brain size, position, healthy contrast, bias and noise are not.
See ``docs/synthetic_cohort.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from monai_protoshare.data.cases import SEQUENCES
from monai_protoshare.data.synthetic_anatomy import CaseGrid, Warp, draw_warp, load_atlas
from monai_protoshare.data.synthetic_common import default_shape, smooth_field, subject_id
from monai_protoshare.data.synthetic_tumour import TumourMaps, TumourPlan, plan_tumour, tumour_box, tumour_maps

__all__ = ["DEFAULT_CONTRAST_JITTER_V3", "SyntheticCaseV3", "generate_case_v3"]

#: Default per-case spread of the healthy tissues' contrast in version 3 (a factor N(1, s) per tissue and sequence).
DEFAULT_CONTRAST_JITTER_V3 = 0.10

# Mean intensity per sequence (T1, T1-CE, T2, FLAIR), relative to white matter in T1.
_CSF, _GM, _WM = (0.30, 0.30, 1.70, 0.18), (0.72, 0.74, 0.80, 0.95), (1.00, 1.00, 0.55, 0.70)
_OEDEMA = (0.60, 0.62, 1.55, 1.40)
_RIM = (0.65, 1.80, 1.00, 1.15)  # HGG enhancing rim (its T1-CE is drawn per case)
_NECROSIS = (0.32, 0.35, 1.65, 0.85)  # HGG necrotic core (its FLAIR is drawn per case)
_HGG_CORE = (0.62, 0.70, 1.20, 1.20)  # HGG non-enhancing core
_LGG_MASS = (0.62, 0.64, 1.40, 1.25)  # LGG mass (FLAIR suppressed to ~0.75 when it shows the mismatch sign)
_FAINT = (0.62, 1.05, 1.20, 1.15)  # LGG faintly enhancing focus
_VESSEL = (0.95, 1.75, 0.55, 0.70)
_WMH = (0.85, 0.87, 0.95, 1.25)
# Amplitude of the compartments' smooth texture: HGG heterogeneous, LGG homogeneous.
_TEXTURE = {"healthy": 0.02, "oedema": 0.06, "ring": 0.15, "necrosis": 0.15, "non-enhancing-HGG": 0.18, "LGG": 0.05}
_NOISE_SIGMA = (0.01, 0.035)  # Rician noise sigma per case, relative to white matter in T1
_BIAS_AMPLITUDE = (0.05, 0.20)  # log-amplitude of the bias field per sequence
_GAIN_RANGE = (400.0, 1200.0)


@dataclass(frozen=True)
class SyntheticCaseV3:
    """Ground truth of one version-3 case (written to ``synthetic_cohort.json``); head-frame mm.

    Attributes:
        subject_id, grade, ambiguous: as in version 2 (``ambiguous``: the atypical phenotype of the grade).
        phenotype: ``ring``, ``non-enhancing`` or ``faint`` (:mod:`~monai_protoshare.data.synthetic_tumour`).
        mismatch: the LGG mass shows the T2-FLAIR mismatch sign.
        tumour_centre_voxel, tumour_radius_mm, core_radius_mm, necrosis_ratio: the tumour's geometry.
        mass_effect, mass_effect_length_mm: amplitude and reach of the push.
        volume_ncr_ml, volume_ed_ml, volume_et_ml, brain_volume_ml: volumes of labels 1, 2, 4 and of the brain.
        atlas_affine: 4 x 4 matrix, case voxel index -> atlas voxel index (``data_prep/atlas`` 1.5 mm grid),
            the affine part of the case's warp (without the smooth deformation and the push).
        scale, rotation_deg, shift_mm, ventricle_scale, deformation_rms_mm: the warp's parameters.
        noise_sigma: Rician noise sigma, relative to white matter in T1.
        n_vessels, n_flair_spots: numbers of distractors.
    """

    subject_id: str
    grade: str
    ambiguous: bool
    phenotype: str
    mismatch: bool
    tumour_centre_voxel: tuple[float, float, float]
    tumour_radius_mm: float
    core_radius_mm: float
    necrosis_ratio: float
    mass_effect: float
    mass_effect_length_mm: float
    volume_ncr_ml: float
    volume_ed_ml: float
    volume_et_ml: float
    brain_volume_ml: float
    atlas_affine: list
    scale: list
    rotation_deg: list
    shift_mm: list
    ventricle_scale: float
    deformation_rms_mm: float
    noise_sigma: float
    n_vessels: int
    n_flair_spots: int


def _intensities(rng: np.random.Generator, plan: TumourPlan, healthy_jitter: np.ndarray) -> dict[str, np.ndarray]:
    """Per-case intensity table: healthy tissues with ``healthy_jitter`` (3, 4), tumour compartments jittered."""
    table = {name: np.array(v, dtype=np.float32) for name, v in (("csf", _CSF), ("gm", _GM), ("wm", _WM))}
    for i, name in enumerate(("csf", "gm", "wm")):
        table[name] = table[name] * healthy_jitter[i].astype(np.float32)
    for name, values in (
        ("oedema", _OEDEMA),
        ("rim", _RIM),
        ("necrosis", _NECROSIS),
        ("hgg_core", _HGG_CORE),
        ("lgg_mass", _LGG_MASS),
        ("faint", _FAINT),
        ("vessel", _VESSEL),
        ("wmh", _WMH),
    ):
        table[name] = (np.array(values) * rng.uniform(0.93, 1.07, 4)).astype(np.float32)
    table["rim"][1] = rng.uniform(1.55, 2.05)  # each tumour enhances to its own degree
    table["necrosis"][3] = rng.uniform(0.6, 1.15)
    table["hgg_core"][1] *= rng.uniform(1.0, 1.15)  # at most a faint, unlabelled enhancement
    table["faint"][1] = rng.uniform(0.95, 1.25)
    table["vessel"][1] = rng.uniform(1.5, 2.0)
    if plan.mismatch:
        table["lgg_mass"][3] = rng.uniform(0.65, 0.85)
    table["oedema_blend"] = np.float32(rng.uniform(0.6, 0.9))
    return table


def _paint_tumour(images: np.ndarray, maps: TumourMaps, plan: TumourPlan, table: dict, box0: Sequence[slice]):
    """Blend the tumour's compartments into ``images`` (4, *brain box*) over the tumour box."""
    local = tuple(slice(t.start - b.start, t.stop - b.start) for t, b in zip(maps.box, box0, strict=True))
    core_name = "lgg_mass" if plan.is_lgg else "rim" if plan.phenotype == "ring" else "hgg_core"
    core_texture = {"rim": _TEXTURE["ring"], "hgg_core": _TEXTURE["non-enhancing-HGG"]}.get(core_name, _TEXTURE["LGG"])
    oedema = maps.whole * table["oedema_blend"]
    for c in range(images.shape[0]):
        image = images[c][local]
        image += (table["oedema"][c] * (1 + _TEXTURE["oedema"] * maps.texture) - image) * oedema
        image += (table[core_name][c] * (1 + core_texture * maps.texture) - image) * maps.core
        if plan.phenotype == "ring":
            image += (table["necrosis"][c] * (1 - _TEXTURE["necrosis"] * maps.texture) - image) * maps.necrosis
        elif plan.phenotype == "faint":
            image += (table["faint"][c] - image) * maps.enhancing


def _distractors(images, rng, grid: CaseGrid, box0, tau, brain, plan: TumourPlan, table) -> tuple[int, int]:
    """Enhancing vessel-like spots and tubes, FLAIR-bright white-matter spots, away from the tumour."""
    axes = grid.axes(box0)
    candidates = np.argwhere(brain > 0.5)
    deep_white = np.argwhere((tau > 1.6) & (brain > 0.5))
    keep_out = 1.9 * plan.radius_mm + 6.0

    def sample(pool) -> np.ndarray | None:
        for _ in range(50):
            voxel = pool[rng.integers(len(pool))]
            point = np.array([axes[k].ravel()[voxel[k]] for k in range(3)], dtype=float)
            if np.linalg.norm(point - plan.centre_mm) > keep_out:
                return point
        return None

    def paint(points: np.ndarray, radius: float, values: np.ndarray) -> None:
        low, high = points.min(axis=0) - radius - grid.spacing, points.max(axis=0) + radius + grid.spacing
        sub = grid.box(low, high)
        sub = tuple(slice(max(s.start, b.start), min(s.stop, b.stop)) for s, b in zip(sub, box0, strict=True))
        if any(s.stop <= s.start for s in sub):
            return
        x, y, z = grid.axes(sub)
        start, end = points[0], points[-1]
        axis = end - start
        length = float(np.linalg.norm(axis))
        dx, dy, dz = x - np.float32(start[0]), y - np.float32(start[1]), z - np.float32(start[2])
        if length > 0:
            a = (axis / length).astype(np.float32)
            t = np.clip(dx * a[0] + dy * a[1] + dz * a[2], 0, length)
            dx, dy, dz = dx - t * a[0], dy - t * a[1], dz - t * a[2]
        dist = np.sqrt(dx**2 + dy**2 + dz**2)
        local = tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(sub, box0, strict=True))
        alpha = np.clip(0.5 + (np.float32(radius) - dist) / np.float32(max(grid.spacing, 1.5)), 0, 1) * brain[local]
        for c in range(images.shape[0]):
            images[c][local] += (values[c] - images[c][local]) * alpha

    n_vessels = n_spots = 0
    for _ in range(int(rng.integers(2, 7))):
        point = sample(candidates)
        if point is not None:
            paint(point[None], rng.uniform(1.5, 3.0), table["vessel"])
            n_vessels += 1
    for _ in range(int(rng.integers(1, 4))):
        start = sample(candidates)
        if start is None:
            continue
        direction = rng.standard_normal(3)
        end = start + direction / np.linalg.norm(direction) * rng.uniform(15, 40)
        if (
            np.linalg.norm((start + end) / 2 - plan.centre_mm) > keep_out
            and np.linalg.norm(end - plan.centre_mm) > keep_out
        ):
            paint(np.stack([start, end]), rng.uniform(1.2, 2.0), table["vessel"])
            n_vessels += 1
    for _ in range(int(rng.integers(0, 6))):
        point = sample(deep_white) if len(deep_white) else None
        if point is not None:
            paint(point[None], rng.uniform(2.0, 4.0), table["wmh"])
            n_spots += 1
    return n_vessels, n_spots


def _bias(rng: np.random.Generator, coords: Sequence[np.ndarray]) -> np.ndarray:
    """Smooth multiplicative bias field: exp of a random quadratic polynomial of the position (per voxel)."""
    x, y, z = (c / np.float32(100.0) for c in coords)
    terms = (x, y, z, x * x, y * y, z * z, x * y, x * z, y * z)
    weights = rng.standard_normal(len(terms)) * rng.uniform(*_BIAS_AMPLITUDE) / 2
    log = sum(np.float32(w) * t for w, t in zip(weights, terms, strict=True))
    return np.exp(log - np.float32(np.median(log)) if log.size else log)


def generate_case_v3(
    index: int,
    *,
    seed: int = 0,
    is_lgg: bool,
    ambiguous: bool,
    spacing: float = 2.0,
    shape: Sequence[int] | None = None,
    contrast_jitter: float = DEFAULT_CONTRAST_JITTER_V3,
) -> tuple[np.ndarray, np.ndarray, SyntheticCaseV3]:
    """Generate one version-3 case in memory (arguments and returns as in version 2's ``generate_case``)."""
    shape = tuple(int(n) for n in (default_shape(spacing) if shape is None else shape))
    atlas = load_atlas()
    rng = np.random.default_rng([seed, index])
    grid = CaseGrid(shape, spacing)
    warp = draw_warp(rng, atlas, grid)
    seed_mm = atlas.seeds_mm[rng.integers(len(atlas.seeds_mm))]
    plan = plan_tumour(rng, warp.to_case_mm(seed_mm), is_lgg, ambiguous)
    margin = 2.0 + spacing + 0.45 * plan.push.amplitude * plan.push.length_mm
    box0 = warp.brain_box(atlas, grid, margin)
    tau, mask, lateral = warp.sample(atlas, grid, box0, plan.push)
    brain = (mask >= 0.5).astype(np.float32)

    centre_voxel = grid.to_voxel(plan.centre_mm)
    tbox = tumour_box(centre_voxel, plan.radius_mm, spacing, box0)
    local = tuple(slice(t.start - b.start, t.stop - b.start) for t, b in zip(tbox, box0, strict=True))
    d = [a - np.float32(c) for a, c in zip(grid.axes(tbox), plan.centre_mm, strict=True)]
    maps = tumour_maps(plan, rng, tbox, d, tau[local], brain[local], lateral[local], spacing)

    jitter = np.random.default_rng([seed, index, 2]).normal(1.0, contrast_jitter, (3, len(SEQUENCES)))
    table = _intensities(rng, plan, np.clip(jitter, 0.5, 1.5))
    images = _healthy_images(rng, tau, table, spacing)
    _paint_tumour(images, maps, plan, table, box0)
    n_vessels, n_spots = _distractors(images, rng, grid, box0, tau, brain, plan, table)
    out, sigma = _acquire(rng, images, brain, grid, box0, shape)
    seg = np.zeros(shape, dtype=np.uint8)
    seg[tbox] = maps.seg
    voxel_ml = spacing**3 / 1000
    volumes = [round(float((seg == k).sum() * voxel_ml), 2) for k in (1, 2, 4)]
    return (
        out,
        seg,
        _case_record(
            index,
            is_lgg,
            ambiguous,
            plan,
            centre_voxel,
            volumes,
            brain,
            voxel_ml,
            warp,
            grid,
            sigma,
            n_vessels,
            n_spots,
        ),
    )


def _healthy_images(
    rng: np.random.Generator, tau: np.ndarray, table: dict[str, np.ndarray], spacing: float
) -> np.ndarray:
    """(4, *tau.shape) healthy-tissue images: each sequence piecewise linear in the tissue coordinate ``tau``
    between the CSF, grey- and white-matter values of ``table``, times a smooth texture."""
    low, high = np.minimum(tau, 1), np.maximum(tau - 1, 0)
    texture = 1 + np.float32(_TEXTURE["healthy"]) * smooth_field(rng, tau.shape, 4.0 / spacing)
    return np.stack(
        [
            (table["csf"][c] + (table["gm"][c] - table["csf"][c]) * low + (table["wm"][c] - table["gm"][c]) * high)
            * texture
            for c in range(len(SEQUENCES))
        ]
    )


def _acquire(
    rng: np.random.Generator,
    images: np.ndarray,
    brain: np.ndarray,
    grid: CaseGrid,
    box0: tuple[slice, ...],
    shape: tuple[int, ...],
) -> tuple[np.ndarray, float]:
    """The scanner's part: per sequence a bias field, Rician noise and a gain, inside the brain only.

    Returns the (4, *shape) float32 images on the whole grid (0 outside the brain) and the case's noise sigma.
    """
    inside = np.nonzero(brain)
    axes = grid.axes(box0)
    coords = [axes[k].ravel()[inside[k]] for k in range(3)]
    sigma = rng.uniform(*_NOISE_SIGMA)
    out = np.zeros((len(SEQUENCES), *shape), dtype=np.float32)
    full = tuple(ix + b.start for ix, b in zip(inside, box0, strict=True))
    for c in range(len(SEQUENCES)):
        clean = images[c][inside] * _bias(rng, coords)
        noise = rng.standard_normal((2, clean.size), dtype=np.float32) * np.float32(sigma * rng.uniform(0.8, 1.25))
        gain = np.float32(rng.uniform(*_GAIN_RANGE))
        out[c][full] = np.sqrt((clean + noise[0]) ** 2 + noise[1] ** 2) * gain
    return out, sigma


def _case_record(
    index: int,
    is_lgg: bool,
    ambiguous: bool,
    plan: TumourPlan,
    centre_voxel: np.ndarray,
    volumes: list[float],
    brain: np.ndarray,
    voxel_ml: float,
    warp: Warp,
    grid: CaseGrid,
    sigma: float,
    n_vessels: int,
    n_spots: int,
) -> SyntheticCaseV3:
    """The ground truth of a case, rounded for ``synthetic_cohort.json`` (volumes: NCR, ED, ET in ml)."""
    return SyntheticCaseV3(
        subject_id=subject_id(index),
        grade="LGG" if is_lgg else "HGG",
        ambiguous=bool(ambiguous),
        phenotype=plan.phenotype,
        mismatch=plan.mismatch,
        tumour_centre_voxel=tuple(round(float(v), 2) for v in centre_voxel),
        tumour_radius_mm=round(float(plan.radius_mm), 2),
        core_radius_mm=round(float(plan.core_radius_mm), 2),
        necrosis_ratio=round(float(plan.necrosis_ratio), 3),
        mass_effect=round(float(plan.push.amplitude), 3),
        mass_effect_length_mm=round(float(plan.push.length_mm), 2),
        volume_ncr_ml=volumes[0],
        volume_ed_ml=volumes[1],
        volume_et_ml=volumes[2],
        brain_volume_ml=round(float(brain.sum() * voxel_ml), 1),
        atlas_affine=[[round(float(v), 6) for v in row] for row in warp.voxel_matrix(grid)],
        scale=[round(float(v), 4) for v in warp.scale],
        rotation_deg=[round(float(v), 3) for v in warp.rotation_deg],
        shift_mm=[round(float(v), 3) for v in warp.shift_mm],
        ventricle_scale=round(warp.ventricle_scale, 4),
        deformation_rms_mm=round(float(np.sqrt(np.mean(warp.displacement_mm**2))), 3),
        noise_sigma=round(float(sigma), 4),
        n_vessels=n_vessels,
        n_flair_spots=n_spots,
    )
