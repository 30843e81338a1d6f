"""Pieces shared by the synthetic cohort's generator versions: the BraTS grid, subject ids, smooth random fields.

See :mod:`monai_protoshare.data.synthetic` (the public interface) and ``docs/synthetic_cohort.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "BRATS_FOV_MM",
    "angular_modulation",
    "brats_like_affine",
    "coarse_shape",
    "default_shape",
    "smooth_field",
    "subject_id",
    "upsample",
]

#: Field of view of the BraTS-2020 release (240 x 240 x 155 voxels of 1 mm), in mm.
BRATS_FOV_MM = (240.0, 240.0, 155.0)


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


def upsample(coarse: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Separable linear interpolation of a coarse 3-D array onto ``shape`` (corner samples aligned)."""
    out = coarse
    for axis, n in enumerate(shape):
        k = coarse.shape[axis]
        position = np.linspace(0, k - 1, n)
        low = np.minimum(position.astype(np.intp), k - 2)
        weight = (position - low).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
        out = np.take(out, low, axis=axis) * (1 - weight) + np.take(out, low + 1, axis=axis) * weight
    return out


def coarse_shape(shape: Sequence[int], correlation_vox: float) -> tuple[int, ...]:
    return tuple(max(2, int(math.ceil(n / max(correlation_vox, 1.0))) + 1) for n in shape)


def smooth_field(rng: np.random.Generator, shape: Sequence[int], correlation_vox: float) -> np.ndarray:
    """Smooth random field of about unit standard deviation (linear upsampling of coarse white noise)."""
    field = upsample(rng.standard_normal(coarse_shape(shape, correlation_vox), dtype=np.float32), shape)
    return field / max(float(field.std()), 1e-6)


def angular_modulation(
    rng: np.random.Generator, amplitude: float, n_terms: int = 4
) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
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
