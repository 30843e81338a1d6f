"""Shared inputs of the data_prep tests: the atlas at 3 mm and one synthetic DICOM study (written once per worker)."""

from __future__ import annotations

from pathlib import Path

import pytest
import SimpleITK as sitk

from data_prep.atlas import Atlas, load_atlas
from data_prep.dicom_study_writer import SyntheticStudy, write_synthetic_brain_study

#: Registration in the tests runs on the atlas at this spacing (fast; the shipped one is 1.5 mm).
TEST_REGISTRATION_SPACING = 3.0


@pytest.fixture(scope="session")
def atlas3() -> Atlas:
    """The shipped SRI24 atlas resampled to 3 mm (80 x 80 x 52)."""
    return load_atlas(3.0)


@pytest.fixture(scope="session")
def study(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    """A four-sequence skull-stripped study at 3 mm plus localiser, DWI and ADC; read-only (copy to modify)."""
    return write_synthetic_brain_study(tmp_path_factory.mktemp("study") / "STUDY")


@pytest.fixture(scope="session")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    """The four sequences only, at 6 mm: the cheapest study that still registers well (pipeline-path tests)."""
    return write_synthetic_brain_study(tmp_path_factory.mktemp("small") / "SMALL", spacing=6.0, distractors=False)


@pytest.fixture(scope="session")
def small_nifti(small_study: SyntheticStudy, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``small_study``'s four volumes as NIfTI files (scanner geometry kept)."""
    folder = tmp_path_factory.mktemp("small_nifti")
    paths = {}
    for sequence, image in small_study.images.items():
        paths[sequence] = folder / f"{sequence}.nii.gz"
        sitk.WriteImage(image, str(paths[sequence]))
    return paths
