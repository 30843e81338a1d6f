"""Post-registration quality checks on hand-built masks."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep.quality import (
    RegistrationQualityError,
    check_atlas_alignment,
    check_sequence_alignment,
    dice,
    foreground,
)


def _ball(shape=(40, 40, 30), centre=(20, 20, 15), radius=10.0) -> np.ndarray:
    grid = np.indices(shape).transpose(1, 2, 3, 0)
    return np.linalg.norm(grid - np.asarray(centre), axis=-1) <= radius


def test_dice_counts_overlap_optionally_inside_a_region():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2], b[1:3] = True, True
    assert dice(a, b) == pytest.approx(0.5)  # 2 * 4 / (8 + 8)
    assert dice(a, b, within=np.ones((4, 4), bool)) == pytest.approx(0.5)
    assert dice(a, b, within=np.tile([[False], [True], [False], [False]], (1, 4))) == 1.0
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 0.0


def test_foreground_is_tissue_not_air():
    volume = np.full((10, 10), 2.0)  # air noise
    volume[3:7, 3:7] = 500.0
    assert foreground(volume).sum() == 16


def test_atlas_check_passes_aligned_brains_and_fails_a_shifted_one():
    atlas = _ball()
    assert check_atlas_alignment(_ball(centre=(21, 20, 15)), atlas, "S1") > 0.9
    with pytest.raises(RegistrationQualityError, match=r"S1: .*Dice with the atlas 0\.\d+ < 0\.75") as error:
        check_atlas_alignment(_ball(centre=(32, 20, 15)), atlas, "S1")
    assert error.value.scores["atlas_dice"] < 0.75


def test_sequence_check_names_each_misaligned_sequence_and_ignores_outside_the_field_of_view():
    head = 400.0 * _ball()
    fov = np.ones(head.shape, bool)
    slab = fov.copy()
    slab[:, :, 20:] = False  # a FLAIR covering only part of the head is not a failure
    flair = head * slab
    volumes = {"t1ce": head, "t1": head, "t2": 400.0 * _ball(centre=(33, 20, 15)), "flair": flair}
    with pytest.raises(RegistrationQualityError, match="t2 -> T1-CE") as error:
        check_sequence_alignment(volumes, {"t1ce": fov, "t1": fov, "t2": fov, "flair": slab}, "S2")
    assert "flair" not in str(error.value) and "t1 ->" not in str(error.value)
    assert error.value.scores["flair_dice"] == 1.0 and error.value.scores["t1_dice"] == 1.0
