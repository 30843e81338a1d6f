"""Brain extraction with deepbet (optional extra ``monai_protoshare[bet]``; its weights ship in the wheel).

deepbet (Fisch et al. 2024, MIT licence) is a T1w-trained 3-D U-Net; measured here 11-13 s per volume on
2 CPU threads and Dice 0.98 against the BraTS-SRI24 brain mask (``reference/data_prep.md`` §3). The
pipeline runs it on the native T1 (the sequence registered to the atlas) and applies the mask to every co-registered sequence,
as the BraTS pipeline does. BraTS data and other already skull-stripped inputs skip it.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import SimpleITK as sitk

from data_prep.geometry import nibabel_to_sitk, sitk_to_nibabel

__all__ = ["DEEPBET_THRESHOLD", "brain_mask"]

logger = logging.getLogger(__name__)

#: deepbet's default probability threshold.
DEEPBET_THRESHOLD = 0.5


@functools.lru_cache(maxsize=1)
def _extractor():
    """One deepbet model per process (loading the two TorchScript models takes about a second)."""
    try:
        import torch
        from deepbet import BrainExtraction
    except ImportError as err:
        raise ImportError(
            "skull stripping needs deepbet: pip install 'monai_protoshare[bet]' (deepbet==1.0.2), "
            "or turn it off (--skull-strip off) for input that is already skull-stripped"
        ) from err
    return BrainExtraction(no_gpu=not torch.cuda.is_available())


def brain_mask(image: sitk.Image, threshold: float = DEEPBET_THRESHOLD) -> sitk.Image:
    """Return the brain mask of a T1-weighted head image, on the image's own grid.

    Args:
        image: 3-D T1-weighted (or T1-CE) image with skull, any orientation and spacing.
        threshold: probability above which a voxel is brain.

    Returns:
        uint8 image (0/1) with the geometry of ``image``.

    Raises:
        ImportError: deepbet is not installed (the message says how to install it or turn stripping off).
        ValueError: deepbet finds no brain.
    """
    extractor = _extractor()
    _, mask, volume_ml = extractor.run(sitk_to_nibabel(sitk.Cast(image, sitk.sitkFloat32)), threshold=threshold)
    out = nibabel_to_sitk(mask, dtype=np.uint8)
    out.CopyInformation(image)
    if volume_ml <= 0:
        raise ValueError("deepbet found no brain in the T1-CE; check the series or pass --skull-strip off")
    logger.info("deepbet brain volume %.0f ml", volume_ml)
    return out
