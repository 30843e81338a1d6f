"""Post-registration checks that fail a case loudly when a registration clearly failed.

Two overlaps, computed in the output (SRI24) space after the composed transforms:

* **atlas Dice**: the case's brain mask against the SRI24 brain mask. Rigidly aligned adult brains
  overlap by about 0.85-0.95 (size and shape differ between people); a registration that is
  off by a centimetre or more, flipped or diverged falls well below :data:`MIN_ATLAS_DICE`.
* **sequence Dice**: each sequence's foreground (tissue, above :data:`FOREGROUND_FRACTION` of its 99th
  percentile) against the reference sequence's (T1, the one registered to the atlas), counted only where both
  fields of view overlap. Sequences of one
  session overlap by 0.9 or more when aligned.

A third check catches what overlaps miss, a sequence a few millimetres or degrees off inside a well-covered brain
(a foreground Dice barely moves): **sequence agreement**, the normalised mutual information
``NMI = (H(A) + H(B)) / H(A, B)`` (Studholme et al., Pattern Recognit 32(1), 1999) of each sequence with the
reference inside the brain, which any contrast pair maximises where the anatomy coincides. Its level depends on
the contrasts, so the check is relative: the sequence is moved by small rigid perturbations (shifts of
:data:`AGREEMENT_SHIFT_MM`, rotations of :data:`AGREEMENT_ROTATION_DEG` about the brain centre); a registered pair
sits at the NMI maximum, a misregistered one gains more than :data:`MAX_NMI_GAIN` from some perturbation. An
absolute floor :data:`MIN_SEQUENCE_NMI` catches pairs so far apart that no small move helps.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

__all__ = [
    "AGREEMENT_ROTATION_DEG",
    "AGREEMENT_SHIFT_MM",
    "FOREGROUND_FRACTION",
    "MAX_NMI_GAIN",
    "MIN_ATLAS_DICE",
    "MIN_SEQUENCE_DICE",
    "MIN_SEQUENCE_NMI",
    "RegistrationQualityError",
    "check_atlas_alignment",
    "check_sequence_agreement",
    "check_sequence_alignment",
    "dice",
    "foreground",
    "normalised_mutual_information",
    "sequence_agreement",
]

#: Minimum brain-mask Dice against the atlas (config key ``min_atlas_dice``).
MIN_ATLAS_DICE = 0.75
#: Minimum foreground Dice of a sequence against the reference (config key ``min_sequence_dice``).
MIN_SEQUENCE_DICE = 0.8
#: Tissue threshold as a fraction of the image's 99th percentile (air in MR is a few per cent of it).
FOREGROUND_FRACTION = 0.1
#: Largest NMI gain a small rigid perturbation may bring (config key ``max_nmi_gain``). Measured on simulated
#: clinical cases (:mod:`data_prep.clinical_simulation`, T1-CE/T2/FLAIR vs T1): aligned and 1 mm / 1 degree off
#: -0.13 to -0.009, 2 mm / 2 degrees off +0.009 to +0.036, 3 mm or 3 degrees off +0.03 to +0.17.
MAX_NMI_GAIN = 0.0
#: Lowest NMI with the reference inside the brain (config key ``min_sequence_nmi``); 1 means independent images.
#: Measured as above: aligned 1.16-1.34, 10 mm and 10 degrees off 1.019-1.033.
MIN_SEQUENCE_NMI = 1.04
#: Perturbations of the agreement check: shifts along each axis (mm) and rotations about each axis (degrees).
AGREEMENT_SHIFT_MM = 3.0
AGREEMENT_ROTATION_DEG = 3.0
#: Joint-histogram bins of the NMI (32 is the usual choice for MR).
NMI_BINS = 32
#: The agreement check works on every second voxel along each axis (a 3 mm grid from the 1.5 mm output).
AGREEMENT_STRIDE = 2


class RegistrationQualityError(ValueError):
    """A registration of one case clearly failed; ``scores`` holds every Dice computed."""

    def __init__(self, message: str, scores: dict[str, float]):
        super().__init__(message)
        self.scores = scores


def dice(a: np.ndarray, b: np.ndarray, within: np.ndarray | None = None) -> float:
    """Dice overlap of two boolean arrays, optionally only inside ``within``; 0 when both are empty."""
    if within is not None:
        a, b = a & within, b & within
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 0.0


def foreground(volume: np.ndarray, fraction: float = FOREGROUND_FRACTION) -> np.ndarray:
    """Voxels above ``fraction`` of the 99th percentile of the non-zero voxels (tissue, not air)."""
    nonzero = volume[volume != 0]
    if nonzero.size == 0:
        return np.zeros(volume.shape, dtype=bool)
    return volume > fraction * float(np.percentile(nonzero, 99))


def check_atlas_alignment(
    brain: np.ndarray,
    atlas_brain: np.ndarray,
    subject: str,
    min_dice: float = MIN_ATLAS_DICE,
    reference: str = "t1",
) -> float:
    """Brain-mask Dice of the registered reference sequence with the atlas; raise when it is below ``min_dice``.

    Args:
        brain: the case's brain mask in output space, (H, W, D).
        atlas_brain: the SRI24 brain mask on the same grid, (H, W, D).
        subject: named in the error.
        min_dice: threshold (config key ``min_atlas_dice``).
        reference: the sequence registered to the atlas (named in the error).

    Raises:
        RegistrationQualityError: with the score and the likely causes.
    """
    score = dice(brain, atlas_brain)
    if score < min_dice:
        raise RegistrationQualityError(
            f"{subject}: registration failed the quality check: {reference} -> SRI24 brain-mask Dice with the atlas "
            f"{score:.3f} < {min_dice} (wrong series, poor skull stripping, unstripped input with --skull-strip off, "
            "or a failed registration; try --backend greedy)",
            {"atlas_dice": score},
        )
    return score


def check_sequence_alignment(
    volumes: dict[str, np.ndarray],
    fields_of_view: dict[str, np.ndarray],
    subject: str,
    min_dice: float = MIN_SEQUENCE_DICE,
    reference: str = "t1",
) -> dict[str, float]:
    """Foreground Dice of each sequence with ``reference`` inside their common field of view; raise on a failure.

    Args:
        volumes: sequence name -> volume in output space before skull stripping, (H, W, D); has ``reference``.
        fields_of_view: sequence name -> boolean, where that sequence has data in output space, (H, W, D).
        subject: named in the error.
        min_dice: threshold (config key ``min_sequence_dice``).
        reference: the sequence the others were registered to.

    Returns:
        ``{"<sequence>_dice": score}`` for every sequence but the reference.

    Raises:
        RegistrationQualityError: naming every sequence below the threshold, with its score.
    """
    tissue = foreground(volumes[reference])
    scores, failures = {}, []
    for sequence, volume in volumes.items():
        if sequence == reference:
            continue
        overlap = fields_of_view[sequence] & fields_of_view[reference]
        score = scores[f"{sequence}_dice"] = dice(foreground(volume), tissue, within=overlap)
        if score < min_dice:
            failures.append(f"{sequence} -> {reference}: foreground Dice {score:.3f} < {min_dice}")
    if failures:
        raise RegistrationQualityError(
            f"{subject}: registration failed the quality check: {'; '.join(failures)} "
            "(a series of another patient or session, a partial field of view, or a failed registration; "
            "try --backend greedy or check the series identification)",
            scores,
        )
    return scores


def normalised_mutual_information(a: np.ndarray, b: np.ndarray, bins: int = NMI_BINS) -> float:
    """Studholme's NMI ``(H(a) + H(b)) / H(a, b)`` of two equally long 1-D samples: 1 (independent) to 2 (identical)."""
    joint = np.histogram2d(a, b, bins=bins)[0]
    joint = joint[joint > 0] / joint.sum()
    marginals = [np.histogram(x, bins=bins)[0] for x in (a, b)]
    entropies = [-np.sum(p[p > 0] / p.sum() * np.log(p[p > 0] / p.sum())) for p in marginals]
    return float(sum(entropies) / -np.sum(joint * np.log(joint)))


def sequence_agreement(
    reference: np.ndarray, volume: np.ndarray, brain: np.ndarray, spacing_mm: float = 1.5
) -> tuple[float, float]:
    """NMI of ``volume`` with ``reference`` inside ``brain``, and the largest gain a small rigid move brings.

    Args:
        reference: the reference sequence in output space, (H, W, D).
        volume: the other sequence on the same grid, (H, W, D).
        brain: boolean brain mask on that grid, (H, W, D).
        spacing_mm: isotropic spacing of the grid.

    Returns:
        ``(nmi, gain)``: NMI at the registered position, and the maximum over the 12 perturbations (shifts of
        :data:`AGREEMENT_SHIFT_MM`, rotations of :data:`AGREEMENT_ROTATION_DEG`) of their NMI minus ``nmi``.
    """
    step = slice(None, None, AGREEMENT_STRIDE)
    reference, brain = reference[step, step, step], brain[step, step, step]
    # Smoothed before subsampling (anti-aliasing), as the perturbed copies are interpolated anyway.
    volume = ndimage.gaussian_filter(volume.astype(np.float32), AGREEMENT_STRIDE / 2.0)[step, step, step]
    spacing = spacing_mm * AGREEMENT_STRIDE
    nmi = normalised_mutual_information(reference[brain], volume[brain])
    centre = np.argwhere(brain).mean(axis=0)
    perturbed = []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            shift = np.zeros(3)
            shift[axis] = sign * AGREEMENT_SHIFT_MM / spacing
            rotation = Rotation.from_rotvec(np.eye(3)[axis] * np.deg2rad(sign * AGREEMENT_ROTATION_DEG)).as_matrix()
            for matrix, offset in ((np.eye(3), shift), (rotation, centre - rotation @ centre)):
                moved = ndimage.affine_transform(volume, matrix, offset, order=1, mode="nearest")
                perturbed.append(normalised_mutual_information(reference[brain], moved[brain]))
    return nmi, max(perturbed) - nmi


def check_sequence_agreement(
    volumes: Mapping[str, np.ndarray],
    brain: np.ndarray,
    subject: str,
    reference: str = "t1",
    spacing_mm: float = 1.5,
    min_nmi: float = MIN_SEQUENCE_NMI,
    max_gain: float = MAX_NMI_GAIN,
) -> dict[str, float]:
    """Check that every sequence agrees with ``reference`` inside the brain (:func:`sequence_agreement`).

    Args:
        volumes: sequence name -> volume in output space, (H, W, D); has ``reference``.
        brain: boolean brain mask in output space, (H, W, D).
        subject: named in the error.
        reference: the sequence the others were registered to.
        spacing_mm: isotropic spacing of the output grid.
        min_nmi: NMI floor (config key ``min_sequence_nmi``).
        max_gain: largest NMI gain a perturbation may bring (config key ``max_nmi_gain``).

    Returns:
        ``{"<sequence>_nmi": nmi, "<sequence>_nmi_gain": gain}`` for every sequence but the reference.

    Raises:
        RegistrationQualityError: naming every disagreeing sequence, with its scores.
    """
    scores, failures = {}, []
    for sequence, volume in volumes.items():
        if sequence == reference:
            continue
        nmi, gain = sequence_agreement(volumes[reference], volume, brain, spacing_mm)
        scores[f"{sequence}_nmi"], scores[f"{sequence}_nmi_gain"] = nmi, gain
        if nmi < min_nmi or gain > max_gain:
            failures.append(
                f"{sequence} vs {reference}: NMI {nmi:.3f} (floor {min_nmi}), a {AGREEMENT_SHIFT_MM:g} mm / "
                f"{AGREEMENT_ROTATION_DEG:g} degree move raises it by {gain:.3f} (limit {max_gain})"
            )
    if failures:
        raise RegistrationQualityError(
            f"{subject}: the sequences disagree after registration: {'; '.join(failures)} "
            "(a sequence misregistered by millimetres or degrees; try --backend greedy, or check the series)",
            scores,
        )
    return scores
