"""Post-registration checks that fail a case loudly when a registration clearly failed.

Two overlaps, computed in the output (SRI24) space after the composed transforms:

* **atlas Dice**: the case's brain mask against the SRI24 brain mask. Rigidly aligned adult brains
  overlap by about 0.85-0.95 (size and shape differ between people); a registration that is
  off by a centimetre or more, flipped or diverged falls well below :data:`MIN_ATLAS_DICE`.
* **sequence Dice**: each sequence's foreground (tissue, above :data:`FOREGROUND_FRACTION` of its 99th
  percentile) against the T1-CE's, counted only where both fields of view overlap. Sequences of one
  session overlap by 0.9 or more when aligned.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "FOREGROUND_FRACTION",
    "MIN_ATLAS_DICE",
    "MIN_SEQUENCE_DICE",
    "RegistrationQualityError",
    "check_atlas_alignment",
    "check_sequence_alignment",
    "dice",
    "foreground",
]

#: Minimum brain-mask Dice against the atlas (config key ``min_atlas_dice``).
MIN_ATLAS_DICE = 0.75
#: Minimum foreground Dice of a sequence against the T1-CE (config key ``min_sequence_dice``).
MIN_SEQUENCE_DICE = 0.8
#: Tissue threshold as a fraction of the image's 99th percentile (air in MR is a few per cent of it).
FOREGROUND_FRACTION = 0.1


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
    brain: np.ndarray, atlas_brain: np.ndarray, subject: str, min_dice: float = MIN_ATLAS_DICE
) -> float:
    """Brain-mask Dice of the registered T1-CE with the atlas; raise when it is below ``min_dice``.

    Args:
        brain: the case's brain mask in output space, (H, W, D).
        atlas_brain: the SRI24 brain mask on the same grid, (H, W, D).
        subject: named in the error.
        min_dice: threshold (config key ``min_atlas_dice``).

    Raises:
        RegistrationQualityError: with the score and the likely causes.
    """
    score = dice(brain, atlas_brain)
    if score < min_dice:
        raise RegistrationQualityError(
            f"{subject}: registration failed the quality check: T1-CE -> SRI24 brain-mask Dice with the atlas "
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
) -> dict[str, float]:
    """Foreground Dice of each sequence with the T1-CE inside their common field of view; raise on a failure.

    Args:
        volumes: sequence name -> volume in output space before skull stripping, (H, W, D); has ``"t1ce"``.
        fields_of_view: sequence name -> boolean, where that sequence has data in output space, (H, W, D).
        subject: named in the error.
        min_dice: threshold (config key ``min_sequence_dice``).

    Returns:
        ``{"<sequence>_dice": score}`` for every sequence but the T1-CE.

    Raises:
        RegistrationQualityError: naming every sequence below the threshold, with its score.
    """
    reference = foreground(volumes["t1ce"])
    scores, failures = {}, []
    for sequence, volume in volumes.items():
        if sequence == "t1ce":
            continue
        overlap = fields_of_view[sequence] & fields_of_view["t1ce"]
        score = scores[f"{sequence}_dice"] = dice(foreground(volume), reference, within=overlap)
        if score < min_dice:
            failures.append(f"{sequence} -> T1-CE: foreground Dice {score:.3f} < {min_dice}")
    if failures:
        raise RegistrationQualityError(
            f"{subject}: registration failed the quality check: {'; '.join(failures)} "
            "(a series of another patient or session, a partial field of view, or a failed registration; "
            "try --backend greedy or check the series identification)",
            scores,
        )
    return scores
