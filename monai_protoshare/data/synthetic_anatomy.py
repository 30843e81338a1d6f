"""Version 3's anatomy: the shipped SRI24 atlas as tissue classes, warped per case (affine, smooth deformation).

The atlas (``data_prep/atlas/``: the skull-stripped SRI24 T1 and its brain mask on the 1.5 mm BraTS grid) is
read once per process (:func:`load_atlas`, cached). Its T1 intensities inside the mask fall into three classes
by a 1-D k-means (CSF, grey matter, white matter); each voxel gets a *tissue coordinate* ``tau`` that is
piecewise linear in its intensity between the class means (0 CSF, 1 grey, 2 white matter), so that partial
volume between tissues is kept and a case's contrast is a per-sequence function of ``tau``.

A case is the atlas seen through its own :class:`Warp` (the inverse of ``p = R S (q - c) + c + t``, a smooth
random displacement, an enlargement or shrinkage of the ventricles) and, around the tumour, a radial push
(mass effect). Coordinates are *head-frame* millimetres: the centre of the field of view is 0, axes along the
voxel axes (L, P, S). See ``docs/synthetic_cohort.md``.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

from monai_protoshare.data.synthetic_common import coarse_shape

__all__ = ["ATLAS_SPACING", "Atlas", "CaseGrid", "Push", "Warp", "atlas_dir", "draw_warp", "load_atlas"]

#: File names of the shipped atlas (``data_prep/atlas/``; :mod:`data_prep.atlas` documents and rebuilds them).
ATLAS_T1_FILE, ATLAS_MASK_FILE = "sri24_t1_brain_1.5mm.nii.gz", "sri24_brain_mask_1.5mm.nii.gz"
ATLAS_SPACING = 1.5
# The atlas voxel a lies at BraTS 1 mm index 0.25 + 1.5 a (same field of view, origin shifted by (1.5 - 1) / 2);
# the head frame's origin is the centre of the BraTS 1 mm grid (240 x 240 x 155).
_ATLAS_ORIGIN_1MM = 0.25
_FOV_CENTRE_1MM = np.array([119.5, 119.5, 77.0])

_SEED_DEPTH_MM = 16.0  # tumour seeds: white matter at least this deep below the brain surface,
_SEED_MIDLINE_MM = 16.0  # this far from the midline,
_SEED_MIN_Z_MM = -22.0  # and above the posterior fossa (head-frame z)
_VENTRICLE_SIGMA_MM = np.array([14.0, 32.0, 18.0])  # extent of the ventricles' enlargement or shrinkage


@dataclass(frozen=True, eq=False)
class Atlas:
    """The atlas as the generator uses it (arrays on the 1.5 mm grid, read-only).

    Attributes:
        t1: atlas T1 (float32).
        tau: tissue coordinate, 0 CSF, 1 grey matter, 2 white matter, piecewise linear in ``t1``; 0 outside the mask.
        mask: brain mask (float32 0/1).
        class_means: T1 means of the CSF, grey and white matter classes (k-means).
        brain_centre_mm: centroid of the mask (head frame).
        brain_box_mm: (2, 3) lowest and highest voxel centres of the mask (head frame).
        ventricle_centre_mm: centroid of the CSF class near the brain centre (head frame).
        seeds_mm: (n, 3) deep white-matter positions where tumours start (head frame).
        near_brain: the mask dilated by one voxel (bool), where the case's interpolation is done.
        hull_mm: (n, 3) vertices of the mask's convex hull (head frame), for the warped brain's box.
    """

    t1: np.ndarray
    tau: np.ndarray
    mask: np.ndarray
    class_means: tuple[float, float, float]
    brain_centre_mm: np.ndarray
    brain_box_mm: np.ndarray
    ventricle_centre_mm: np.ndarray
    seeds_mm: np.ndarray
    near_brain: np.ndarray
    hull_mm: np.ndarray

    @staticmethod
    def to_mm(index: np.ndarray) -> np.ndarray:
        """Atlas voxel indices (..., 3) -> head-frame mm."""
        return _ATLAS_ORIGIN_1MM + ATLAS_SPACING * np.asarray(index, dtype=float) - _FOV_CENTRE_1MM

    @staticmethod
    def to_index(mm: np.ndarray) -> np.ndarray:
        """Head-frame mm (..., 3) -> atlas voxel indices."""
        return (np.asarray(mm, dtype=float) + _FOV_CENTRE_1MM - _ATLAS_ORIGIN_1MM) / ATLAS_SPACING


def atlas_dir() -> Path:
    """The shipped atlas folder, ``data_prep/atlas`` of this installation.

    Found without importing ``data_prep`` (the library depends on its data files, not on its code).
    """
    spec = importlib.util.find_spec("data_prep")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))) / "atlas"
    return Path(__file__).resolve().parents[2] / "data_prep" / "atlas"


def _kmeans_1d(values: np.ndarray, k: int = 3, iterations: int = 100) -> np.ndarray:
    """Class means of a 1-D k-means on integer ``values`` (run on their histogram; initialised at quantiles)."""
    counts = np.bincount(values - values.min()).astype(float)
    levels = np.arange(counts.size) + float(values.min())
    means = np.quantile(values, np.linspace(0.1, 0.9, k))
    for _ in range(iterations):
        nearest = np.argmin(np.abs(levels[:, None] - means[None]), axis=1)
        new = np.array([np.average(levels[nearest == j], weights=counts[nearest == j]) for j in range(k)])
        if np.allclose(new, means):
            break
        means = new
    return means


@functools.lru_cache(maxsize=2)
def load_atlas(directory: str | None = None) -> Atlas:
    """Read the atlas from ``directory`` (default :func:`atlas_dir`) and derive its tissue classes (cached).

    Raises:
        FileNotFoundError: when an atlas file is missing (``python -m data_prep build-atlas`` rebuilds them).
    """
    folder = Path(directory) if directory else atlas_dir()
    paths = [folder / ATLAS_T1_FILE, folder / ATLAS_MASK_FILE]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"SRI24 atlas file {path} not found (rebuild: python -m data_prep build-atlas).")
    t1 = np.asarray(nib.load(paths[0]).dataobj).astype(np.float32)
    inside = np.asarray(nib.load(paths[1]).dataobj) > 0
    means = _kmeans_1d(t1[inside].astype(np.int64))
    tau = np.zeros_like(t1)
    tau[inside] = np.interp(t1[inside], means, [0.0, 1.0, 2.0])
    index = np.argwhere(inside)
    centre = Atlas.to_mm(index.mean(axis=0))
    low, high = index.min(axis=0), index.max(axis=0)
    box = np.stack([Atlas.to_mm(low), Atlas.to_mm(high)])
    crop = tuple(slice(lo, hi + 1) for lo, hi in zip(low, high, strict=True))  # the brain's box, to save time
    x, y, z = (  # head-frame mm of the crop's voxels along each axis, broadcastable
        (_ATLAS_ORIGIN_1MM + ATLAS_SPACING * np.arange(s.start, s.stop) - _FOV_CENTRE_1MM[k]).reshape(
            [-1 if a == k else 1 for a in range(3)]
        )
        for k, s in enumerate(crop)
    )
    brain, tissue = inside[crop], tau[crop]
    distance2 = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2
    ventricle = np.argwhere(brain & (distance2 < 30.0**2) & (tissue < 0.3)).mean(axis=0) + low
    depth = ndimage.distance_transform_edt(np.pad(brain, 1), sampling=ATLAS_SPACING)[1:-1, 1:-1, 1:-1]
    seeds = (
        (tissue > 1.6) & (depth > _SEED_DEPTH_MM) & (np.abs(x - centre[0]) > _SEED_MIDLINE_MM) & (z > _SEED_MIN_Z_MM)
    )
    near = ndimage.binary_dilation(inside, np.ones((3, 3, 3), bool))
    hull = Atlas.to_mm(np.argwhere(inside & ~ndimage.binary_erosion(inside)))
    arrays = [t1, tau, inside.astype(np.float32), near]
    for array in arrays:
        array.flags.writeable = False
    return Atlas(
        *arrays[:3],
        class_means=tuple(float(m) for m in means),  # type: ignore[arg-type]
        brain_centre_mm=centre,
        brain_box_mm=box,
        ventricle_centre_mm=Atlas.to_mm(ventricle),
        seeds_mm=Atlas.to_mm(np.argwhere(seeds) + low),
        near_brain=near,
        hull_mm=np.ascontiguousarray(hull[ConvexHull(hull).vertices]),
    )


class CaseGrid:
    """Voxel grid of one case: voxel ``i`` lies at head-frame ``(i - (n - 1) / 2) * spacing`` mm."""

    def __init__(self, shape: Sequence[int], spacing: float) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.spacing = float(spacing)
        self.centre = np.array([(n - 1) / 2 for n in self.shape])

    def to_mm(self, voxel: np.ndarray) -> np.ndarray:
        return (np.asarray(voxel, dtype=float) - self.centre) * self.spacing

    def to_voxel(self, mm: np.ndarray) -> np.ndarray:
        return np.asarray(mm, dtype=float) / self.spacing + self.centre

    def axes(self, box: Sequence[slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Head-frame mm of the voxels of ``box`` along each axis, as broadcastable float32 arrays."""
        out = []
        for axis, (s, c) in enumerate(zip(box, self.centre, strict=True)):
            view = [1, 1, 1]
            view[axis] = -1
            out.append(((np.arange(s.start, s.stop) - c) * self.spacing).astype(np.float32).reshape(view))
        return tuple(out)  # type: ignore[return-value]

    def box(self, low_mm: np.ndarray, high_mm: np.ndarray) -> tuple[slice, slice, slice]:
        """Voxel slices covering the head-frame box ``[low_mm, high_mm]``, clipped to the grid (never empty)."""
        low, high = self.to_voxel(low_mm), self.to_voxel(high_mm)
        slices = []
        for lo, hi, n in zip(low, high, self.shape, strict=True):
            start = min(max(0, int(math.floor(lo))), n - 1)
            slices.append(slice(start, max(start + 1, min(n, int(math.ceil(hi)) + 1))))
        return tuple(slices)  # type: ignore[return-value]


@dataclass(frozen=True)
class Push:
    """Mass effect: the tissue at distance ``r`` of ``centre_mm`` comes from ``r (1 - amplitude exp(-r^2/length^2))``."""

    centre_mm: np.ndarray
    amplitude: float
    length_mm: float


def _upsample_box(coarse: np.ndarray, shape: Sequence[int], box: Sequence[slice]) -> np.ndarray:
    """Linear interpolation of ``coarse`` (corners aligned with a grid of ``shape``) at the voxels of ``box``."""
    out = coarse
    for axis, (n, s) in enumerate(zip(shape, box, strict=True)):
        k = coarse.shape[axis]
        position = np.arange(s.start, s.stop) * ((k - 1) / max(n - 1, 1))
        low = np.minimum(position.astype(np.intp), k - 2)
        weight = (position - low).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
        out = np.take(out, low, axis=axis) * (1 - weight) + np.take(out, low + 1, axis=axis) * weight
    return out


@dataclass(frozen=True)
class Warp:
    """Per-case anatomy: the case point ``p`` shows the atlas point ``q = S^-1 R^T (p - c - t) + c + D(p)``,
    then moved radially about the ventricles (factor ``ventricle_scale``); ``c`` is the atlas brain centre.

    Attributes:
        scale: per-axis brain size factors ``S`` (x, y, z).
        rotation_deg: rotations about x, y, z (applied in that order: ``R = Rz Ry Rx``).
        shift_mm: translation ``t``.
        ventricle_scale: > 1 enlarges the ventricles, < 1 shrinks them.
        displacement_mm: smooth displacement ``D`` (3, kx, ky, kz), atlas mm on a coarse grid over the case grid.
    """

    scale: np.ndarray
    rotation_deg: np.ndarray
    shift_mm: np.ndarray
    ventricle_scale: float
    displacement_mm: np.ndarray
    centre_mm: np.ndarray

    @property
    def rotation(self) -> np.ndarray:
        a, b, c = np.deg2rad(self.rotation_deg)
        rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
        ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
        rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
        return rz @ ry @ rx

    def to_case_mm(self, q: np.ndarray) -> np.ndarray:
        """Atlas head-frame mm (..., 3) -> case head-frame mm, affine part only."""
        forward = self.rotation * self.scale[None, :]
        return (np.asarray(q) - self.centre_mm) @ forward.T + self.centre_mm + self.shift_mm

    def linear_to_atlas(self) -> tuple[np.ndarray, np.ndarray]:
        """``(M, o)`` with ``q = M p + o``: case head-frame mm -> atlas head-frame mm, affine part."""
        m = np.linalg.inv(self.rotation * self.scale[None, :])
        return m, self.centre_mm - m @ (self.centre_mm + self.shift_mm)

    def voxel_matrix(self, grid: CaseGrid) -> np.ndarray:
        """4 x 4 matrix: case voxel index -> atlas voxel index (the affine part of the warp)."""
        m, o = self.linear_to_atlas()
        case = np.diag([grid.spacing] * 3 + [1.0])
        case[:3, 3] = -grid.centre * grid.spacing
        atlas = np.diag([1 / ATLAS_SPACING] * 3 + [1.0])
        atlas[:3, 3] = (_FOV_CENTRE_1MM - _ATLAS_ORIGIN_1MM) / ATLAS_SPACING
        linear = np.eye(4)
        linear[:3, :3], linear[:3, 3] = m, o
        return atlas @ linear @ case

    def brain_box(self, atlas: Atlas, grid: CaseGrid, margin_mm: float) -> tuple[slice, slice, slice]:
        """Voxel box of the grid holding the warped brain: its convex hull moved by the affine part, plus the
        largest smooth displacement and ``margin_mm``."""
        case = self.to_case_mm(atlas.hull_mm)
        margin = margin_mm + float(np.sqrt((self.displacement_mm**2).sum(axis=0)).max()) * float(self.scale.max())
        return grid.box(case.min(axis=0) - margin, case.max(axis=0) + margin)

    def sample(
        self, atlas: Atlas, grid: CaseGrid, box: Sequence[slice], push: Push | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tissue coordinate, brain mask and signed distance to the atlas's mid-sagittal plane (mm, + left), float32
        3-D arrays over ``box``, of the case pushed by ``push``."""
        px, py, pz = grid.axes(box)
        m, o = self.linear_to_atlas()
        m32 = m.astype(np.float32)
        q = [m32[k, 0] * px + m32[k, 1] * py + m32[k, 2] * pz + np.float32(o[k]) for k in range(3)]
        if push is not None:  # q(p + delta): the linear part of the push, where it is not negligible
            reach = 2.5 * push.length_mm
            sub = grid.box(push.centre_mm - reach, push.centre_mm + reach)
            sub = tuple(slice(max(s.start, b.start), min(s.stop, b.stop)) for s, b in zip(sub, box, strict=True))
            if all(s.stop > s.start for s in sub):
                local = tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(sub, box, strict=True))
                d = [a - np.float32(c) for a, c in zip(grid.axes(sub), push.centre_mm, strict=True)]
                r2 = d[0] ** 2 + d[1] ** 2 + d[2] ** 2
                factor = np.float32(-push.amplitude) * np.exp(r2 / np.float32(-(push.length_mm**2)))
                for k in range(3):
                    q[k][local] += factor * (m32[k, 0] * d[0] + m32[k, 1] * d[1] + m32[k, 2] * d[2])
        for k in range(3):
            q[k] += _upsample_box(self.displacement_mm[k], grid.shape, box)
        if self.ventricle_scale != 1.0:
            v = [q[k] - np.float32(atlas.ventricle_centre_mm[k]) for k in range(3)]
            s2 = sum((v[k] / np.float32(_VENTRICLE_SIGMA_MM[k])) ** 2 for k in range(3))
            beta = np.float32(1.0 - 1.0 / self.ventricle_scale)
            gain = 1 - beta * np.exp(-s2)
            q = [np.float32(atlas.ventricle_centre_mm[k]) + v[k] * gain for k in range(3)]
        index = [
            (q[k] + np.float32(_FOV_CENTRE_1MM[k] - _ATLAS_ORIGIN_1MM)) / np.float32(ATLAS_SPACING) for k in range(3)
        ]
        # Interpolate only near the brain (the nearest atlas voxel in the mask dilated by one): a third of the box.
        nearest = tuple(np.clip(np.rint(index[k]), 0, n - 1).astype(np.intp) for k, n in enumerate(atlas.mask.shape))
        near = atlas.near_brain[nearest]
        points = np.stack([index[k][near] for k in range(3)])
        tau, mask = np.zeros(near.shape, np.float32), np.zeros(near.shape, np.float32)
        for out, source in ((tau, atlas.tau), (mask, atlas.mask)):
            out[near] = ndimage.map_coordinates(source, points, order=1, mode="constant", cval=0.0, output=np.float32)
        return tau, mask, q[0] - np.float32(atlas.brain_centre_mm[0])


def draw_warp(rng: np.random.Generator, atlas: Atlas, grid: CaseGrid) -> Warp:
    """A random per-case warp: size, rotation, position, a smooth deformation and the ventricles' size."""
    size = rng.uniform(0.94, 1.06)
    scale = size * rng.uniform(0.96, 1.04, 3)
    rotation = rng.uniform(-1, 1, 3) * np.array([8.0, 5.0, 6.0])
    shift = rng.uniform(-6.0, 6.0, 3)
    ventricle = float(np.exp(rng.uniform(np.log(0.8), np.log(1.5))))
    coarse = coarse_shape(grid.shape, 30.0 / grid.spacing)
    displacement = (rng.standard_normal((3, *coarse)) * 2.5).astype(np.float32)
    return Warp(scale, rotation, shift, ventricle, displacement, atlas.brain_centre_mm)
