"""Post-registration quality checks on hand-built masks, and the sequence-agreement check on a simulated case."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from data_prep.atlas import load_atlas, sri24_grid
from data_prep.clinical_simulation import simulate_clinical_case
from data_prep.geometry import resample
from data_prep.known_motion import rigid_matrix
from data_prep.quality import (
    MIN_SEQUENCE_DICE,
    RegistrationQualityError,
    check_atlas_alignment,
    check_sequence_agreement,
    check_sequence_alignment,
    dice,
    foreground,
    normalised_mutual_information,
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
    with pytest.raises(RegistrationQualityError, match="t2 -> t1ce") as error:
        check_sequence_alignment(volumes, {"t1ce": fov, "t1": fov, "t2": fov, "flair": slab}, "S2", reference="t1ce")
    assert "flair" not in str(error.value) and "t1 ->" not in str(error.value)
    assert error.value.scores["flair_dice"] == 1.0 and error.value.scores["t1_dice"] == 1.0


def test_nmi_is_one_for_independent_and_two_for_identical_samples():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50_000), rng.normal(size=50_000)
    assert normalised_mutual_information(a, a) == pytest.approx(2.0)
    assert normalised_mutual_information(a, b) == pytest.approx(1.0, abs=0.02)
    assert normalised_mutual_information(a, 5.0 - 3.0 * a) == pytest.approx(2.0)  # an inverted contrast


@pytest.fixture(scope="module")
def simulated(atlas3):
    """A simulated clinical case put on the 1.5 mm output grid by its true transforms, and the brain mask there."""
    case = simulate_clinical_case(atlas3, seed=10, in_plane_mm=2.0)
    grid = sri24_grid(1.5)
    brain = sitk.GetArrayFromImage(load_atlas(1.5).mask) > 0
    centre = grid.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in grid.GetSize()])
    return case, grid, brain, centre


def _on_grid(case, grid, sequence, matrix=None):
    matrix = case.truth[sequence] if matrix is None else matrix
    return sitk.GetArrayFromImage(resample(case.images[sequence], grid, matrix))


def test_agreement_check_passes_registered_sequences(simulated):
    case, grid, brain, _ = simulated
    volumes = {sequence: _on_grid(case, grid, sequence) for sequence in case.images}
    scores = check_sequence_agreement(volumes, brain, "S3", reference="t1")
    assert set(scores) == {f"{s}_{k}" for s in ("t1ce", "t2", "flair") for k in ("nmi", "nmi_gain")}
    assert all(scores[f"{s}_nmi_gain"] < 0.0 for s in ("t1ce", "t2", "flair"))


@pytest.mark.parametrize("motion", [((3.0, 0.0, 0.0), (0.0, 0.0, 0.0)), ((0.0, 0.0, 0.0), (0.0, 3.0, 0.0))])
def test_agreement_check_flags_a_sequence_misregistered_by_3_degrees_or_3_mm(simulated, motion):
    # A 3 mm / 3 degree error leaves the foreground Dice above 0.9: the overlap check would pass it.
    case, grid, brain, centre = simulated
    volumes = {sequence: _on_grid(case, grid, sequence) for sequence in case.images}
    volumes["flair"] = _on_grid(case, grid, "flair", case.truth["flair"] @ rigid_matrix(*motion, centre))
    assert dice(foreground(volumes["flair"]), foreground(volumes["t1"])) > MIN_SEQUENCE_DICE
    with pytest.raises(RegistrationQualityError, match="S4: the sequences disagree.*flair vs t1") as error:
        check_sequence_agreement(volumes, brain, "S4", reference="t1")
    assert "t2 vs" not in str(error.value) and "t1ce vs" not in str(error.value)
    assert error.value.scores["flair_nmi_gain"] > 0.0 > error.value.scores["t2_nmi_gain"]
