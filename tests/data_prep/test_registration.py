"""Rigid registration recovers a known transform of the real SRI24 anatomy (not a symmetric phantom)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from data_prep.known_motion import moved_atlas, transform_error_mm
from data_prep.registration import register_rigid


@pytest.mark.parametrize("backend", ["simpleitk", "greedy"])
def test_rigid_registration_recovers_a_known_transform_within_1mm(atlas3, backend):
    if backend == "greedy":
        pytest.importorskip("picsl_greedy")
    moving, truth = moved_atlas(atlas3)
    result = register_rigid(atlas3.t1, moving, backend=backend, init="geometry", threads=2)
    mean, worst = transform_error_mm(atlas3, result.matrix, truth)
    print(f"{backend}: known-transform error mean {mean:.3f} mm, max {worst:.3f} mm, {result.seconds:.1f} s")
    assert mean < 1.0 and worst < 1.0
    assert result.backend == backend
    # Rigid: the matrix is a rotation (orthonormal, det +1).
    rotation = result.matrix[:3, :3]
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-4)
    assert np.linalg.det(rotation) == pytest.approx(1.0, abs=1e-4)


def test_registration_is_reproducible_run_to_run(atlas3):
    # Fixed sampling seed: runs differ only by the threads' floating-point summation order (micrometres).
    moving, _ = moved_atlas(atlas3, rotation_deg=(3.0, 0.0, -2.0), shift_mm=(2.0, 1.0, 0.0))
    first = register_rigid(atlas3.t1, moving, threads=2)
    second = register_rigid(atlas3.t1, moving, threads=2)
    assert transform_error_mm(atlas3, first.matrix, second.matrix)[1] < 1e-3


def test_registration_rejects_unknown_options_and_non_3d_images(atlas3):
    with pytest.raises(ValueError, match="greedy"):
        register_rigid(atlas3.t1, atlas3.t1, backend="gredy")
    with pytest.raises(ValueError, match="moments"):
        register_rigid(atlas3.t1, atlas3.t1, init="moment")
    with pytest.raises(ValueError, match="3-D"):
        register_rigid(atlas3.t1, sitk.Image([8, 8], sitk.sitkFloat32))
