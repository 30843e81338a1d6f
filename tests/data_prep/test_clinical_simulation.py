"""Simulated clinical acquisitions: geometry, recorded transforms, contrasts, tumour, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from data_prep.clinical_simulation import ORIENTATIONS, ClinicalCase, simulate_clinical_case, tissue_centres
from data_prep.geometry import resample
from data_prep.known_motion import rigid_matrix

#: Small enough for the default suite: 3 mm atlas, 2 mm pixels (clinical cases use 1.5 mm and 0.9 mm).
TINY = dict(in_plane_mm=2.0)


@pytest.fixture(scope="module")
def case(atlas3) -> ClinicalCase:
    return simulate_clinical_case(atlas3, seed=3, **TINY)


def _back_on_atlas(case: ClinicalCase, sequence: str, atlas, matrix: np.ndarray | None = None) -> np.ndarray:
    """The sequence resampled onto the atlas grid through ``matrix`` (default: its recorded truth)."""
    matrix = case.truth[sequence] if matrix is None else matrix
    return sitk.GetArrayFromImage(resample(case.images[sequence], atlas.t1, matrix))


def test_each_sequence_is_a_thick_slice_acquisition_in_its_recorded_orientation(case):
    assert set(case.images) == {"t1", "t1ce", "t2", "flair"}
    for sequence, image in case.images.items():
        described = case.description["sequences"][sequence]
        spacing = image.GetSpacing()
        assert spacing[:2] == pytest.approx((2.0, 2.0)) and 5.0 <= spacing[2] <= 6.0
        assert list(spacing) == pytest.approx(described["spacing_mm"])
        direction = np.asarray(image.GetDirection()).reshape(3, 3)
        np.testing.assert_allclose(direction, np.diag(ORIENTATIONS[described["orientation"]]))
        assert image.GetPixelID() == sitk.sitkFloat32
    # The head pose and the per-sequence motions make every recorded transform a distinct rigid motion.
    pose = case.truth["t1"]
    np.testing.assert_allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-9)
    assert abs(case.description["pose_deg"][0]) > 10.0  # seed 3: a 12 degree oblique tilt
    assert not np.allclose(case.truth["t1"], case.truth["flair"])


def test_the_recorded_transform_puts_the_anatomy_back_on_the_atlas(case, atlas3):
    brain = sitk.GetArrayFromImage(atlas3.mask) > 0
    atlas_t1 = sitk.GetArrayFromImage(atlas3.t1)[brain]
    back = _back_on_atlas(case, "t1", atlas3)[brain]
    assert np.corrcoef(back, atlas_t1)[0, 1] > 0.8
    centre = atlas3.t1.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in atlas3.t1.GetSize()])
    off = case.truth["t1"] @ rigid_matrix((0.0, 0.0, 0.0), (6.0, 0.0, 0.0), centre)
    wrong = _back_on_atlas(case, "t1", atlas3, off)[brain]
    assert np.corrcoef(wrong, atlas_t1)[0, 1] < np.corrcoef(back, atlas_t1)[0, 1] - 0.2


def test_contrasts_tumour_and_bias_are_those_of_clinical_sequences(case, atlas3):
    lesion = sitk.GetArrayFromImage(case.lesion)
    assert set(np.unique(lesion)) == {0, 1, 2, 4}
    assert not np.any(lesion[sitk.GetArrayFromImage(atlas3.mask) == 0])
    csf, _, white = tissue_centres(atlas3)
    t1 = sitk.GetArrayFromImage(atlas3.t1)
    healthy = (lesion == 0) & (sitk.GetArrayFromImage(atlas3.mask) > 0)
    csf_voxels, white_voxels = healthy & (np.abs(t1 - csf) < 20), healthy & (np.abs(t1 - white) < 20)
    means = {}
    for sequence in case.images:
        back = _back_on_atlas(case, sequence, atlas3)
        means[sequence] = {
            "csf": back[csf_voxels].mean(),
            "white": back[white_voxels].mean(),
            "oedema": back[lesion == 2].mean(),
            "rim": back[lesion == 4].mean(),
        }
    assert means["t1"]["csf"] < 0.6 * means["t1"]["white"]
    # Thick slices and the 3 mm atlas blur CSF with its neighbours: the ratios are below the model's.
    assert means["t2"]["csf"] > 1.4 * means["t2"]["white"]  # T2: fluid bright
    assert means["flair"]["csf"] < 0.75 * means["flair"]["white"]  # FLAIR: fluid suppressed
    assert means["flair"]["oedema"] > 1.5 * means["flair"]["white"]  # ... and oedema bright
    assert means["t1ce"]["rim"] > 1.6 * means["t1"]["rim"]  # enhancement only after contrast
    # Rician noise in the background, not zeros.
    background = sitk.GetArrayFromImage(case.images["t2"])[:, :3, :3]
    assert background.min() >= 0.0 and background.mean() > 5.0


def test_same_seed_same_case_and_other_seeds_differ(atlas3):
    first = simulate_clinical_case(atlas3, seed=5, sequences=("flair",), **TINY)
    second = simulate_clinical_case(atlas3, seed=5, sequences=("flair",), **TINY)
    other = simulate_clinical_case(atlas3, seed=6, sequences=("flair",), **TINY)
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(first.images["flair"]), sitk.GetArrayFromImage(second.images["flair"])
    )
    np.testing.assert_array_equal(first.truth["flair"], second.truth["flair"])
    assert not np.allclose(first.truth["flair"], other.truth["flair"])


def test_unknown_sequences_are_rejected_by_name(atlas3):
    with pytest.raises(KeyError, match="dwi"):
        simulate_clinical_case(atlas3, sequences=("t1", "dwi"))
