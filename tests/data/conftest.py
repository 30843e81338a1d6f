"""Tiny synthetic BraTS-layout cohorts shared by the data tests (written once per test worker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from monai_protoshare.data.synthetic import generate_cohort

#: Voxel size of the tiny cohort: 40 x 40 x 26 voxels covering the BraTS field of view.
TINY_SPACING = 6.0


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six cases (lgg_fraction 0.5: three of each grade) at 6 mm; read-only by convention (copy to modify)."""
    return generate_cohort(
        tmp_path_factory.mktemp("cohort"), n_cases=6, seed=0, spacing=TINY_SPACING, lgg_fraction=0.5, progress=False
    )
