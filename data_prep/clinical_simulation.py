"""Simulated clinical acquisitions of the SRI24 anatomy with known rigid transforms (registration scoring).

A clinical glioma study is not the atlas moved: its 2-D sequences have thick slices (5-6 mm) with a slice
profile, 0.9 mm pixels, their own voxel orientation (LAS, LPS, ...), an oblique head tilt of up to 15 degrees,
a smooth receive-coil bias field, a tumour, Rician noise, and contrasts other than T1. :func:`simulate_clinical_case`
makes such a study from the shipped SRI24 T1 and brain mask (Rohlfing et al. 2010) and records, per sequence, the
4x4 LPS point transform from atlas points to that image's points: what registration must recover
(:func:`data_prep.known_motion.transform_error_mm` and :func:`~data_prep.known_motion.transform_error_deg` score it).

Model (each step a named constant or argument):

* **tissues**: CSF, grey and white matter are the three k-means classes of the atlas T1 inside the brain; each
  sequence maps them to its own relative intensities (:data:`TISSUE_CONTRAST`, T2- and FLAIR-like: CSF bright in
  T2 and dark in FLAIR) by piecewise-linear interpolation of the T1 value, which keeps partial-volume edges;
* **anatomy**: the patient's brain is not the atlas: a smooth random displacement (Gaussian-filtered noise, peak
  ``deformation_mm``) plus a random anisotropic scaling (up to ``scaling``) warp the atlas, with the displacement's
  least-squares rigid part (translation and small rotation over the brain) removed, so the recorded rigid transform
  stays the best rigid alignment of the patient to the atlas;
* **tumour**: an irregular blob (radius modulated by a smoothed random field) centred in white matter, with a
  necrotic core, an enhancing rim (bright on T1-CE only) and oedema (bright on T2/FLAIR) (:data:`LESION_CONTRAST`);
* **geometry**: the head pose (rotation up to ``max_tilt_deg`` about each axis, shift up to ``max_shift_mm``), plus
  a small per-sequence motion (patients move between series); an axial 2-D grid in scanner coordinates with
  ``in_plane_mm`` pixels, slices ``slice_mm`` thick, a voxel orientation drawn from :data:`ORIENTATIONS`;
* **slice profile**: each slice is the mean of :data:`SUB_SLICES` thin sub-slices across its thickness (a box
  profile, the ideal of a 2-D slice-selective excitation);
* **bias field**: ``exp`` of a random quadratic polynomial over the field of view, peak deviation ``bias``;
* **noise**: Rician, ``|v + n1 + i n2|`` with ``n ~ N(0, (noise * white matter)^2)``, in the background too.

The shipped atlas is skull-stripped and no skull model ships with the project, so the simulated heads are brains
only (as after skull stripping); the unstripped case is not simulated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from data_prep.atlas import Atlas
from data_prep.geometry import make_grid, resample
from data_prep.known_motion import rigid_matrix

__all__ = [
    "LESION_CONTRAST",
    "ORIENTATIONS",
    "SUB_SLICES",
    "TISSUE_CONTRAST",
    "ClinicalCase",
    "simulate_clinical_case",
    "tissue_centres",
]

#: Relative intensity of CSF, grey and white matter per sequence (white matter of the T1 = 1).
TISSUE_CONTRAST = {
    "t1": (0.35, 0.65, 1.0),
    "t1ce": (0.35, 0.68, 1.0),
    "t2": (1.6, 0.85, 0.6),
    "flair": (0.25, 0.9, 0.65),
}
#: Relative intensity of the tumour's necrotic core, enhancing rim and oedema per sequence.
LESION_CONTRAST = {
    "t1": (0.3, 0.55, 0.62),
    "t1ce": (0.3, 1.45, 0.62),
    "t2": (1.7, 1.1, 1.3),
    "flair": (0.6, 1.05, 1.45),
}
#: Voxel-axis orientation codes (nibabel style: the direction each array axis points to) and their LPS directions.
ORIENTATIONS = {
    "LPS": (1.0, 1.0, 1.0),
    "LAS": (1.0, -1.0, 1.0),
    "RAS": (-1.0, -1.0, 1.0),
    "RPS": (-1.0, 1.0, 1.0),
}
#: Thin sub-slices averaged into one thick slice (the slice profile).
SUB_SLICES = 5
#: White-matter level of the written images (a scanner-like unsigned range).
WHITE_MATTER_LEVEL = 1000.0
#: Tumour compartments: outer normalised radius ``q`` of the necrosis, the enhancing rim and the oedema.
LESION_SHELLS = (0.45, 0.7, 1.35)
#: Every n-th brain voxel enters the least-squares fit of the deformation's rigid part (it is smooth).
LSQ_STRIDE = 7


@dataclass(frozen=True)
class ClinicalCase:
    """A simulated clinical study.

    Attributes:
        images: sequence -> 3-D float32 image on its own scanner grid (LPS geometry).
        truth: sequence -> (4, 4) LPS point transform mapping atlas points to that image's points.
        lesion: uint8 label map of the tumour on the atlas grid (1 necrosis, 4 enhancing, 2 oedema).
        description: JSON-ready parameters of the simulation (pose, spacing, orientation per sequence).
    """

    images: dict[str, sitk.Image]
    truth: dict[str, np.ndarray]
    lesion: sitk.Image
    description: dict


def tissue_centres(atlas: Atlas, iterations: int = 20) -> np.ndarray:
    """Mean T1 of CSF, grey and white matter: 3-means of the atlas T1 inside the brain mask, sorted ascending."""
    values = sitk.GetArrayFromImage(atlas.t1)[sitk.GetArrayFromImage(atlas.mask) > 0].astype(float)
    centres = np.percentile(values, [10.0, 50.0, 90.0])
    for _ in range(iterations):
        nearest = np.abs(values[:, None] - centres[None, :]).argmin(axis=1)
        centres = np.array([values[nearest == k].mean() for k in range(3)])
    return np.sort(centres)


def simulate_clinical_case(
    atlas: Atlas,
    seed: int = 0,
    sequences: Sequence[str] = ("t1", "t1ce", "t2", "flair"),
    in_plane_mm: float = 0.9,
    slice_mm: tuple[float, float] = (5.0, 6.0),
    max_tilt_deg: float = 15.0,
    max_shift_mm: float = 15.0,
    inter_series_motion: tuple[float, float] = (1.5, 1.5),
    deformation_mm: float = 3.0,
    scaling: float = 0.06,
    bias: float = 0.25,
    noise: float = 0.03,
    field_of_view_mm: float = 230.0,
) -> ClinicalCase:
    """Simulate one clinical study of the atlas anatomy with a tumour (see the module docstring).

    Args:
        atlas: the SRI24 atlas (:func:`data_prep.atlas.load_atlas`); 1.5 mm for realistic cases, 3 mm for tests.
        seed: the random seed; the same seed gives the same study.
        sequences: which of :data:`TISSUE_CONTRAST`'s sequences to acquire.
        in_plane_mm: pixel size within a slice.
        slice_mm: range of the slice thickness (drawn per sequence; no gap).
        max_tilt_deg: largest head rotation about each axis (the pose; pitch, the usual oblique tilt, is drawn
            from the whole range, roll and yaw from a third of it).
        max_shift_mm: largest head shift along each axis.
        inter_series_motion: largest extra rotation (degrees) and shift (mm) of each sequence.
        deformation_mm: peak of the smooth non-rigid displacement of the anatomy (0: the atlas brain itself).
        scaling: largest relative size change of the brain along each axis.
        bias: peak deviation of the multiplicative bias field from 1.
        noise: Rician noise level as a fraction of the white matter.
        field_of_view_mm: in-plane field of view.

    Returns:
        The :class:`ClinicalCase`.

    Raises:
        KeyError: an unknown sequence name.
    """
    unknown = sorted(set(sequences) - set(TISSUE_CONTRAST))
    if unknown:
        raise KeyError(f"sequences must be among {sorted(TISSUE_CONTRAST)}; received unknown {unknown}")
    rng = np.random.default_rng(seed)
    centre = np.asarray(atlas.t1.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in atlas.t1.GetSize()]))
    pose_deg = rng.uniform(-1.0, 1.0, 3) * max_tilt_deg * np.array([1.0, 1 / 3, 1 / 3])
    pose_shift = rng.uniform(-max_shift_mm, max_shift_mm, 3)
    head = rigid_matrix(pose_deg, pose_shift, centre)
    lesion = _lesion(atlas, rng)
    contrasts = _contrast_volumes(atlas, lesion, sequences)
    displacement = _non_rigid_displacement(atlas, deformation_mm, scaling, rng)
    contrasts = {sequence: _warp(volume, displacement) for sequence, volume in contrasts.items()}
    lesion = _warp(lesion, displacement, order=0)
    images, truth, described = {}, {}, {}
    for sequence in sequences:
        motion_deg = rng.uniform(-1.0, 1.0, 3) * inter_series_motion[0]
        motion_mm = rng.uniform(-1.0, 1.0, 3) * inter_series_motion[1]
        truth[sequence] = rigid_matrix(motion_deg, motion_mm, head[:3, :3] @ centre + head[:3, 3]) @ head
        orientation = list(ORIENTATIONS)[int(rng.integers(len(ORIENTATIONS)))]
        spacing = (in_plane_mm, in_plane_mm, float(rng.uniform(*slice_mm)))
        grid = _scanner_grid(atlas, truth[sequence], spacing, orientation, field_of_view_mm)
        values = _thick_slices(contrasts[sequence], grid, np.linalg.inv(truth[sequence]))
        values *= _bias_field(values.shape, bias, rng)
        images[sequence] = _with_geometry(_rician(values, noise * WHITE_MATTER_LEVEL, rng), grid)
        described[sequence] = {
            "orientation": orientation,
            "spacing_mm": list(spacing),
            "size": list(grid.GetSize()),
            "motion_deg": motion_deg.tolist(),
            "motion_mm": motion_mm.tolist(),
        }
    description = {
        "seed": seed,
        "pose_deg": pose_deg.tolist(),
        "pose_shift_mm": pose_shift.tolist(),
        "deformation_mm": deformation_mm,
        "scaling": scaling,
        "bias": bias,
        "noise": noise,
        "sub_slices": SUB_SLICES,
        "skull": "none (the shipped SRI24 atlas is skull-stripped; no skull model ships)",
        "sequences": described,
    }
    return ClinicalCase(images=images, truth=truth, lesion=lesion, description=description)


def _lesion(atlas: Atlas, rng: np.random.Generator) -> sitk.Image:
    """An irregular tumour label map on the atlas grid, centred on a white-matter voxel deep in the brain."""
    t1 = sitk.GetArrayFromImage(atlas.t1)
    brain = sitk.GetArrayFromImage(atlas.mask) > 0
    spacing = np.asarray(atlas.t1.GetSpacing())[::-1]  # array order (z, y, x)
    radius_mm = rng.uniform(12.0, 20.0)
    depth = ndimage.distance_transform_edt(brain, sampling=spacing)
    white = (t1 >= tissue_centres(atlas)[2] * 0.9) & (depth > radius_mm)
    candidates = np.argwhere(white if white.any() else depth == depth.max())
    centre = candidates[rng.integers(len(candidates))]
    offsets = (np.indices(t1.shape) - centre[:, None, None, None]) * spacing[:, None, None, None]
    # A smoothed random field modulates the radius by about +-30 %: lobulated, not a sphere.
    field = ndimage.gaussian_filter(rng.standard_normal(t1.shape), sigma=6.0 / spacing)
    field /= field.std() + 1e-12
    q = np.linalg.norm(offsets, axis=0) / (radius_mm * (1.0 + 0.3 * np.clip(field, -2.0, 2.0)))
    labels = np.zeros(t1.shape, np.uint8)
    for value, outer in zip((2, 4, 1), LESION_SHELLS[::-1]):  # oedema, then rim, then core inside it
        labels[q < outer] = value
    labels[~brain] = 0
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(atlas.t1)
    return image


def _contrast_volumes(atlas: Atlas, lesion: sitk.Image, sequences: Sequence[str]) -> Mapping[str, sitk.Image]:
    """Each sequence's contrast of the atlas (healthy tissue remapped, tumour blended in) on the atlas grid."""
    t1 = sitk.GetArrayFromImage(atlas.t1).astype(float)
    labels = sitk.GetArrayFromImage(lesion)
    csf, grey, white = tissue_centres(atlas)
    spacing = np.asarray(atlas.t1.GetSpacing())[::-1]
    # Soft tumour compartments (1 mm blur) so the lesion has no staircase edge.
    weights = [ndimage.gaussian_filter((labels == v).astype(float), 1.0 / spacing) for v in (1, 4, 2)]
    outside = np.clip(1.0 - sum(weights), 0.0, 1.0)
    volumes = {}
    for sequence in sequences:
        c, g, w = TISSUE_CONTRAST[sequence]
        healthy = np.interp(t1, [0.0, csf, grey, white, 2.0 * white], [0.0, c, g, w, w])
        # Partial volume with the zero background scales the lesion too (the mask edge stays an edge).
        tissue_fraction = np.clip(t1 / csf, 0.0, 1.0)
        tumour = sum(wt * v for wt, v in zip(weights, LESION_CONTRAST[sequence])) * tissue_fraction
        values = (healthy * outside + tumour) * WHITE_MATTER_LEVEL
        image = sitk.GetImageFromArray(values.astype(np.float32))
        image.CopyInformation(atlas.t1)
        volumes[sequence] = image
    return volumes


def _non_rigid_displacement(atlas: Atlas, peak_mm: float, scaling: float, rng: np.random.Generator) -> np.ndarray:
    """Displacement (mm, LPS components, (3, K, J, I)) without rigid part over the brain: smooth noise + scaling."""
    shape = sitk.GetArrayFromImage(atlas.t1).shape
    spacing = np.asarray(atlas.t1.GetSpacing())[::-1]
    brain = sitk.GetArrayFromImage(atlas.mask) > 0
    # Physical LPS coordinates of every voxel (identity-direction atlas grid), components x, y, z.
    index = np.indices(shape)[::-1].reshape(3, -1).T
    points = (index * np.asarray(atlas.t1.GetSpacing()) + np.asarray(atlas.t1.GetOrigin())).T.reshape(3, *shape)
    centre = points[:, brain].mean(axis=1)
    relative = points - centre[:, None, None, None]
    smooth = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), 20.0 / spacing) for _ in range(3)])
    smooth *= peak_mm / (np.abs(smooth[:, brain]).max() + 1e-12)
    field = smooth + rng.uniform(-scaling, scaling, 3)[:, None, None, None] * relative
    # Remove the least-squares rigid part over the brain: d ~ t + w x r (small-angle rotation).
    r = relative[:, brain].T[::LSQ_STRIDE]
    cross = np.stack([np.cross(np.eye(3)[axis], r) for axis in range(3)], axis=2)  # (N, 3 components, 3 axes)
    design = np.concatenate([np.broadcast_to(np.eye(3), (len(r), 3, 3)), cross], axis=2).reshape(-1, 6)
    params = np.linalg.lstsq(design, field[:, brain].T[::LSQ_STRIDE].reshape(-1), rcond=None)[0]
    rigid = params[:3, None] + np.cross(params[3:], relative.reshape(3, -1).T).T
    return field - rigid.reshape(3, *shape)


def _warp(volume: sitk.Image, displacement: np.ndarray, order: int = 1) -> sitk.Image:
    """``volume`` pulled back through ``displacement``: out(x) = volume(x + d(x)) (same grid)."""
    values = sitk.GetArrayFromImage(volume)
    spacing = np.asarray(volume.GetSpacing())  # identity direction: d's x, y, z move array axes 2, 1, 0
    coordinates = np.indices(values.shape).astype(float)
    for axis in range(3):
        coordinates[2 - axis] += displacement[axis] / spacing[axis]
    warped = ndimage.map_coordinates(values, coordinates, order=order, mode="constant", cval=0.0)
    out = sitk.GetImageFromArray(warped.astype(values.dtype))
    out.CopyInformation(volume)
    return out


def _scanner_grid(
    atlas: Atlas, to_scanner: np.ndarray, spacing: Sequence[float], orientation: str, field_of_view_mm: float
) -> sitk.Image:
    """An axial scanner grid (``orientation`` voxel axes) centred on the moved brain and covering it in z."""
    brain = np.argwhere(sitk.GetArrayFromImage(atlas.mask) > 0)[:, ::-1]
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], float)
    box = brain.min(axis=0) + corners * (brain.max(axis=0) - brain.min(axis=0))
    points = np.array([atlas.mask.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in box])
    moved = points @ to_scanner[:3, :3].T + to_scanner[:3, 3]
    spacing = np.asarray(spacing, float)
    extent = np.array([field_of_view_mm, field_of_view_mm, np.ptp(moved[:, 2]) + 2.0 * spacing[2]])
    size = np.ceil(extent / spacing).astype(int)
    direction = np.diag(ORIENTATIONS[orientation])
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing[None, :]
    affine[:3, 3] = moved.mean(axis=0) - affine[:3, :3] @ ((size - 1) / 2.0)
    return make_grid(size.tolist(), affine)


def _thick_slices(volume: sitk.Image, grid: sitk.Image, to_volume: np.ndarray) -> np.ndarray:
    """``volume`` sampled on ``grid`` with each slice the mean of :data:`SUB_SLICES` sub-slices, (K, J, I)."""
    size = np.asarray(grid.GetSize())
    spacing = np.asarray(grid.GetSpacing())
    direction = np.asarray(grid.GetDirection()).reshape(3, 3)
    thin = spacing[2] / SUB_SLICES
    affine = np.eye(4)
    affine[:3, :3] = direction * np.array([spacing[0], spacing[1], thin])[None, :]
    # The first sub-slice sits half a slice minus half a sub-slice below the first slice's centre.
    affine[:3, 3] = np.asarray(grid.GetOrigin()) - direction[:, 2] * (spacing[2] - thin) / 2.0
    fine = make_grid([int(size[0]), int(size[1]), int(size[2]) * SUB_SLICES], affine)
    values = sitk.GetArrayFromImage(resample(volume, fine, to_volume))
    return values.reshape(int(size[2]), SUB_SLICES, int(size[1]), int(size[0])).mean(axis=1)


def _bias_field(shape: Sequence[int], bias: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field: ``exp`` of a random quadratic over [-1, 1]^3, peak |log| = log(1 + bias)."""
    axes = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij")
    terms = [*axes] + [a * b for i, a in enumerate(axes) for b in axes[i:]]
    log_field = sum(rng.uniform(-1.0, 1.0) * t for t in terms)
    log_field *= np.log1p(bias) / (np.abs(log_field).max() + 1e-12)
    return np.exp(log_field)


def _rician(values: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the complex signal ``values + n1 + i n2`` (Rician noise; Rayleigh in the background)."""
    real = values + rng.normal(0.0, sigma, values.shape)
    imaginary = rng.normal(0.0, sigma, values.shape)
    return np.hypot(real, imaginary)


def _with_geometry(values: np.ndarray, grid: sitk.Image) -> sitk.Image:
    """float32 image of array ``values`` (K, J, I) with ``grid``'s geometry."""
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.CopyInformation(grid)
    return image
