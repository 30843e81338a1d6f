"""Preprocessing and augmentation as MONAI dict transforms (paper App. C; DESIGN §3-§4), and their inversion.

Preprocessing (:func:`preprocessing_transforms`), for an item of :func:`~monai_protoshare.data.brats.load_brats_datalist`:

1. :class:`LoadSequencesd` (``LoadImaged`` naming the file of a bad input) + ``EnsureChannelFirstd``: the four
   sequence files stacked as channels [T1, T1-CE, T2, FLAIR] (4, X, Y, Z) float32, the segmentation (1, X, Y, Z).
2. ``Orientationd("RAS")``.
3. ``CropForegroundd`` to the bounding box of the non-zero voxels of any sequence (the skull-stripped brain),
   done before resampling because it is cheaper on fewer voxels.
4. ``Spacingd`` to ``pixdim`` mm isotropic (bilinear for the image, nearest for the segmentation).
5. ``ResizeWithPadOrCropd`` to ``spatial_size``: a crop or zero-pad centred on the brain's bounding box.
6. ``NormalizeIntensityd(nonzero=True, channel_wise=True)``: z-score per sequence over its non-zero (brain)
   voxels; the background stays 0.
7. With a segmentation: ``mask`` = whole tumour (seg labels {1, 2, 4}, i.e. seg > 0) as (1, H, W, D) float32,
   the tumour mask of the interpretability metrics (never a training input). ``seg`` keeps the labels (float32).

Steps 2-5 are invertible: :func:`to_native_space` takes any map on the network grid back to the shape and
affine of the input sequences. ``label`` and other keys pass through.

Presets (DESIGN §4) are arguments, e.g. ``paper``: ``spatial_size=(128, 128, 96), pixdim=1.5``;
``cpu_small``: ``spatial_size=(64, 64, 48), pixdim=3.0``.

Augmentation (:func:`augmentation_transforms`, :class:`RandChannelwised`) is in
:mod:`monai_protoshare.data.augmentation`; :func:`train_transforms` appends it to the preprocessing.

Example:
    >>> from monai_protoshare.data.transforms import eval_transforms, to_native_space
    >>> transform = eval_transforms(spatial_size=(64, 64, 48), pixdim=3.0)
    >>> item = transform(datalist[0])
    >>> item["image"].shape, item["mask"].shape
    (torch.Size([4, 64, 64, 48]), torch.Size([1, 64, 64, 48]))
    >>> native = to_native_space(item["mask"], item["image"], transform)  # shape and affine of the input files
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import ImageReader, MetaTensor, NibabelReader
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    Invertd,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    ResizeWithPadOrCropd,
    Spacingd,
)
from monai.utils import ensure_tuple, ensure_tuple_rep, look_up_option

# The augmentation lives in its own module; its names stay importable from here, with the other transforms.
from .augmentation import RandChannelwised, augmentation_transforms
from .brats import BratsDatasetError, validate_datalist

__all__ = [
    "LoadSequencesd",
    "RandChannelwised",
    "WholeTumourMaskd",
    "augmentation_transforms",
    "eval_transforms",
    "inference_transforms",
    "preprocessing_transforms",
    "to_native_space",
    "train_transforms",
    "transform_error",
]

_INTERPOLATION = ("linear", "nearest")
# Axis labels of NIfTI world coordinates (RAS+), explicit because MONAI 1.6 is changing the default.
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def _is_nonzero(image: torch.Tensor) -> torch.Tensor:
    """Foreground of a skull-stripped image: every non-zero voxel (a module function, so it pickles)."""
    return image != 0


class LoadSequencesd(LoadImaged):
    """``LoadImaged`` (nibabel, float32) that checks its files and names the file of a bad input.

    Preprocessing also runs on files that no reader validated (a datalist JSON, the Deploy and Label apps). Before
    loading, the headers of all the files under ``keys`` are checked together
    (:func:`~monai_protoshare.data.brats.validate_datalist` with ``voxels=False``: readable, 3-D, finite and
    non-singular affine, one shape and one affine for all); a file whose voxels cannot be read (truncated) is
    found by the reader's voxel checks; after loading, every sequence of ``image_key`` must be finite and not
    all 0. Each failure is a ``ValueError`` naming the subject, the file and the problem (inside a ``Compose``
    MONAI raises it as the cause of its own ``RuntimeError``; :func:`transform_error` gets it back).

    Args:
        keys: ``image_key`` (a list of four sequence paths) and optionally the segmentation's key.
        image_key: key of the sequences [T1, T1-CE, T2, FLAIR].
        id_key: key of the subject id named in errors.
    """

    def __init__(self, keys: KeysCollection, image_key: str = "image", id_key: str = "subject_id") -> None:
        super().__init__(keys, reader="NibabelReader", image_only=True, dtype=np.float32)
        self.image_key, self.id_key = image_key, id_key

    def __call__(self, data: Mapping[Hashable, Any], reader: ImageReader | None = None) -> dict[Hashable, Any]:
        # a reader of its own per call: MONAI's NibabelReader keeps the file names of its last ``read`` on itself,
        # so one reader shared by CacheDataset's threads can pair one case's images with another's (a seg's) names
        reader = reader or NibabelReader()
        files = {key: list(ensure_tuple(data[key])) for key in self.key_iterator(dict(data))}
        images = files.get(self.image_key, [])
        if len(images) != 4 or not all(isinstance(p, (str, os.PathLike)) for f in files.values() for p in f):
            return super().__call__(data, reader)  # not four sequence files: MONAI's loading alone
        subject = str(data.get(self.id_key, Path(images[0]).parent.name))
        seg = next((f[0] for key, f in files.items() if key != self.image_key and f), None)
        case = {"subject_id": subject, "image": images, "seg": seg}
        self._check(case, voxels=False)
        try:
            d = super().__call__(data, reader)
        except Exception:
            self._check(case, voxels=True)  # names the file whose voxels cannot be read
            raise
        problems = []
        for path, channel in zip(images, d[self.image_key], strict=True):
            n_bad = int((~torch.isfinite(channel)).sum())
            if n_bad:
                problems.append(f"{Path(path).name}: {n_bad} NaN/Inf voxel(s)")
            elif not channel.any():
                problems.append(f"{Path(path).name}: all voxels are 0; expected an image of the brain")
        if problems:
            raise ValueError(f"{subject}: cannot preprocess: {'; '.join(problems)}.")
        return d

    @staticmethod
    def _check(case: dict[str, Any], voxels: bool) -> None:
        try:
            validate_datalist([case], case["subject_id"], voxels=voxels, workers=1)
        except BratsDatasetError as err:
            found = "; ".join(f"{p.file}: {p.problem}" for p in err.problems)
            raise ValueError(f"{case['subject_id']}: cannot preprocess: {found}.") from None


def transform_error(error: BaseException) -> BaseException:
    """The error a transform raised, without the ``RuntimeError("applying transform ...")`` wrappers of MONAI's
    ``Compose`` (whose messages name only the transform object)."""
    while isinstance(error, RuntimeError) and str(error).startswith("applying transform") and error.__cause__:
        error = error.__cause__
    return error


class WholeTumourMaskd(MapTransform):
    """Add the whole-tumour mask (seg labels {1, 2, 4}) as (1, H, W, D) float32 under ``mask_key``.

    The mask keeps the segmentation's metadata (affine and applied operations), so it can be inverted like it.

    Args:
        seg_key: key of the (1, H, W, D) BraTS segmentation (labels 0, 1, 2, 4).
        mask_key: key the mask is written to.
    """

    def __init__(self, seg_key: str = "seg", mask_key: str = "mask") -> None:
        super().__init__(seg_key)
        self.seg_key, self.mask_key = seg_key, mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        d[self.mask_key] = (d[self.seg_key] > 0).to(torch.float32)
        return d


def preprocessing_transforms(
    spatial_size: Sequence[int] = (128, 128, 96),
    pixdim: float | Sequence[float] = 1.5,
    *,
    with_seg: bool = True,
    image_key: str = "image",
    seg_key: str = "seg",
    mask_key: str = "mask",
) -> Compose:
    """Deterministic, invertible preprocessing of paper App. C (see the module docstring for the steps).

    Args:
        spatial_size: network input size (H, W, D), e.g. (128, 128, 96) (``paper``) or (64, 64, 48) (``cpu_small``).
        pixdim: isotropic voxel size in mm (1.5 ``paper``, 3.0 ``cpu_small``), or three sizes.
        with_seg: also load ``seg_key`` and add the whole-tumour mask ``mask_key``.
        image_key: key of the list of four sequence paths [T1, T1-CE, T2, FLAIR].
        seg_key: key of the segmentation path.
        mask_key: key of the whole-tumour mask that is added.

    Returns:
        A ``Compose`` giving ``image`` float32 (4, H, W, D) z-scored over brain voxels per channel, and with
        ``with_seg`` also ``seg`` (1, H, W, D) labels and ``mask`` (1, H, W, D) in {0, 1}.
    """
    spatial_size = tuple(int(n) for n in ensure_tuple_rep(spatial_size, 3))
    pixdim = tuple(float(p) for p in ensure_tuple_rep(pixdim, 3))
    if min(spatial_size) < 1 or min(pixdim) <= 0:
        raise ValueError(f"spatial_size must be positive and pixdim > 0 mm, got {spatial_size} and {pixdim}.")
    keys = [image_key, seg_key] if with_seg else [image_key]
    modes = ["bilinear", "nearest"][: len(keys)]
    transforms = [
        LoadSequencesd(keys, image_key=image_key),
        EnsureChannelFirstd(keys),
        Orientationd(keys, axcodes="RAS", labels=_RAS_LABELS),
        CropForegroundd(
            keys,
            source_key=image_key,
            select_fn=_is_nonzero,
            allow_smaller=True,
            start_coord_key=None,
            end_coord_key=None,
        ),
        Spacingd(keys, pixdim=pixdim, mode=modes),
        ResizeWithPadOrCropd(keys, spatial_size=spatial_size, mode="constant"),
        NormalizeIntensityd(image_key, nonzero=True, channel_wise=True),
    ]
    if with_seg:
        transforms.append(WholeTumourMaskd(seg_key, mask_key))
    return Compose(transforms)


def train_transforms(
    spatial_size: Sequence[int],
    pixdim: float | Sequence[float],
    augment: bool = True,
    *,
    with_seg: bool = False,
    image_key: str = "image",
    seg_key: str = "seg",
    mask_key: str = "mask",
) -> Compose:
    """Preprocessing followed (with ``augment``) by :func:`augmentation_transforms` with its defaults.

    ``with_seg`` is off by default: masks are never a training input (DESIGN §3).
    """
    pre = preprocessing_transforms(
        spatial_size, pixdim, with_seg=with_seg, image_key=image_key, seg_key=seg_key, mask_key=mask_key
    )
    if not augment:
        return pre
    label_keys = (seg_key, mask_key) if with_seg else ()
    return Compose([*pre.transforms, *augmentation_transforms(image_key, label_keys).transforms])


def eval_transforms(
    spatial_size: Sequence[int],
    pixdim: float | Sequence[float],
    with_seg: bool = True,
    *,
    image_key: str = "image",
    seg_key: str = "seg",
    mask_key: str = "mask",
) -> Compose:
    """Preprocessing for evaluation: the image, and with ``with_seg`` the segmentation and whole-tumour mask."""
    return preprocessing_transforms(
        spatial_size, pixdim, with_seg=with_seg, image_key=image_key, seg_key=seg_key, mask_key=mask_key
    )


def inference_transforms(
    spatial_size: Sequence[int], pixdim: float | Sequence[float], *, image_key: str = "image"
) -> Compose:
    """Preprocessing of the image alone (no segmentation or label needed)."""
    return preprocessing_transforms(spatial_size, pixdim, with_seg=False, image_key=image_key)


def to_native_space(
    volume: torch.Tensor | np.ndarray,
    preprocessed_image: MetaTensor,
    transform: Compose,
    *,
    mode: str = "linear",
    image_key: str = "image",
) -> MetaTensor:
    """Take a map on the network grid back to the input's native space by inverting the preprocessing.

    Args:
        volume: map (C, H, W, D) on the grid of ``preprocessed_image`` (e.g. an attribution map or a mask).
        preprocessed_image: the (4, H, W, D) image that ``transform`` produced; its ``applied_operations``
            are replayed backwards.
        transform: the very ``Compose`` (same object) that produced ``preprocessed_image``.
        mode: ``"linear"`` (maps) or ``"nearest"`` (labels, masks) resampling.
        image_key: key of the image in ``transform``.

    Returns:
        A MetaTensor (C, X, Y, Z) with the shape and affine of the original sequence files.

    Raises:
        ValueError: when ``volume`` is not 4-D with the spatial shape of ``preprocessed_image``, or when
            ``preprocessed_image`` carries no applied operations.
    """
    mode = look_up_option(mode, _INTERPOLATION)
    volume = torch.as_tensor(volume)
    if volume.ndim != 4 or tuple(volume.shape[1:]) != tuple(preprocessed_image.shape[1:]):
        raise ValueError(
            f"volume must be (C, H, W, D) on the preprocessed grid {tuple(preprocessed_image.shape[1:])}, "
            f"got shape {tuple(volume.shape)}."
        )
    if not isinstance(preprocessed_image, MetaTensor) or not preprocessed_image.applied_operations:
        raise ValueError(
            "preprocessed_image must be the MetaTensor produced by `transform` (with its applied_operations); "
            f"got {type(preprocessed_image).__name__} without applied operations."
        )
    map_key = f"{image_key}_native_map"
    invert = Invertd(map_key, transform=transform, orig_keys=image_key, nearest_interp=mode == "nearest")
    data = {image_key: preprocessed_image, map_key: MetaTensor(volume.to(torch.float32).detach().cpu())}
    return invert(data)[map_key]
