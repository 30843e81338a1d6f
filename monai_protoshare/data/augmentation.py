"""Training augmentation as MONAI dict transforms (paper App. C; DESIGN §4).

:func:`augmentation_transforms`: the eight operations of App. C with the nnU-Net parameters as MProtoNet uses
them (``reference/umprotoshare_code.md`` §4), applied to every training case whatever its grade (the reference
code augments LGG only, a bug). :class:`RandChannelwised` gives nnU-Net's per-channel draws. The preprocessing
they follow is in :mod:`monai_protoshare.data.transforms`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    MapTransform,
    RandAdjustContrast,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmooth,
    RandomizableTransform,
    RandRotated,
    RandScaleIntensity,
    RandScaleIntensityFixedMean,
    RandSimulateLowResolution,
    RandZoomd,
    Transform,
)
from monai.utils import MAX_SEED

__all__ = ["RandChannelwised", "augmentation_transforms"]


class RandChannelwised(RandomizableTransform, MapTransform):
    """Apply a random array transform to each channel on its own (nnU-Net's ``p_per_sample`` / ``p_per_channel``).

    With probability ``prob`` a sample is augmented; each of its channels then, with probability
    ``prob_per_channel``, gets its own random draw of ``transform`` (which should have ``prob=1``).

    Args:
        keys: keys of (C, H, W, D) images.
        transform: a randomizable MONAI array transform, e.g. ``RandGaussianSmooth(prob=1.0)``.
        prob: probability of augmenting a sample.
        prob_per_channel: probability of augmenting each channel of an augmented sample.
        allow_missing_keys: do not raise for missing keys.

    Example:
        >>> blur = RandChannelwised("image", RandGaussianSmooth(prob=1.0), prob=0.2, prob_per_channel=0.5)
        >>> blur.set_random_state(0)({"image": torch.rand(4, 16, 16, 12)})["image"].shape
        torch.Size([4, 16, 16, 12])
    """

    def __init__(
        self,
        keys: KeysCollection,
        transform: RandomizableTransform,
        prob: float = 0.1,
        prob_per_channel: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys, allow_missing_keys)
        if not 0 <= prob_per_channel <= 1:
            raise ValueError(f"prob_per_channel must be in [0, 1], got {prob_per_channel}.")
        self.transform = transform
        self.prob_per_channel = prob_per_channel

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandChannelwised:
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed=int(self.R.randint(MAX_SEED)))
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            image = d[key]
            out = image.clone()
            for channel in range(image.shape[0]):
                if self.R.rand() < self.prob_per_channel:
                    out[channel : channel + 1] = torch.as_tensor(self.transform(image[channel : channel + 1]))
            d[key] = out
        return d


def augmentation_transforms(
    image_key: str = "image",
    label_keys: Sequence[str] = ("seg", "mask"),
    *,
    rotation_deg: float = 30.0,
    prob_rotation: float = 0.2,
    scale_range: tuple[float, float] = (0.7, 1.4),
    prob_scale: float = 0.2,
    noise_std: float = 0.1,
    prob_noise: float = 0.15,
    blur_sigma: tuple[float, float] = (0.5, 1.5),
    prob_blur: float = 0.2,
    prob_blur_per_channel: float = 0.5,
    brightness_range: tuple[float, float] = (0.7, 1.3),
    prob_brightness: float = 0.15,
    contrast_range: tuple[float, float] = (0.65, 1.5),
    prob_contrast: float = 0.15,
    low_res_zoom: tuple[float, float] = (0.5, 1.0),
    prob_low_res: float = 0.25,
    prob_low_res_per_channel: float = 0.5,
    gamma_range: tuple[float, float] = (0.7, 1.5),
    prob_gamma: float = 0.15,
    prob_flip: float = 0.5,
) -> Compose:
    """The eight training augmentations of paper App. C, nnU-Net's parameters as MProtoNet sets them.

    Applied to every training case (either grade), in nnU-Net's order. Spatial operations move the
    ``label_keys`` (if present) with the image, by nearest-neighbour interpolation; intensity operations act
    on the image only. Defaults (``reference/umprotoshare_code.md`` §4):

    1. rotation: ``RandRotated``, each axis U(-30°, 30°), p 0.2;
       scaling: ``RandZoomd``, isotropic factor U(0.7, 1.4), p 0.2, same size kept (zero padding).
       Drawn independently, as MProtoNet's OneOf (scale 0.16, rotation 0.16, both 0.04; total 0.36).
    2. Gaussian noise: ``RandGaussianNoised``, std ~ U(0, 0.1), p 0.15 (all channels).
    3. Gaussian blur: ``RandGaussianSmooth``, sigma ~ U(0.5, 1.5) per axis, p 0.2 per sample, then 0.5 per
       channel, each channel its own sigma.
    4. brightness: ``RandScaleIntensity``, x U(0.7, 1.3), p 0.15, a factor per channel.
    5. contrast: ``RandScaleIntensityFixedMean``, x U(0.65, 1.5) about the channel mean, clipped to the
       channel's original range, p 0.15, a factor per channel.
    6. low resolution: ``RandSimulateLowResolution``, zoom U(0.5, 1) (down-sampling 1-2x, nearest) and back
       (trilinear), p 0.25 per sample, then 0.5 per channel.
    7. gamma: ``RandAdjustContrast``, gamma U(0.7, 1.5) with mean and std retained, p 0.15, per channel.
    8. mirroring: ``RandFlipd`` on each of the three axes, p 0.5 each.

    Args:
        image_key: key of the (4, H, W, D) image.
        label_keys: keys moved with the image by the spatial operations (nearest); missing ones are skipped.
        rotation_deg, prob_rotation, scale_range, prob_scale, noise_std, prob_noise, blur_sigma, prob_blur,
        prob_blur_per_channel, brightness_range, prob_brightness, contrast_range, prob_contrast, low_res_zoom,
        prob_low_res, prob_low_res_per_channel, gamma_range, prob_gamma, prob_flip: the parameters above.

    Returns:
        A ``Compose`` of randomizable transforms (seed it with ``set_random_state``).
    """
    keys = [image_key, *label_keys]
    nearest = ["nearest"] * len(label_keys)
    angle = math.radians(rotation_deg)
    sigma = tuple(blur_sigma)

    def channelwise(transform: Transform, prob: float, prob_per_channel: float = 1.0) -> RandChannelwised:
        return RandChannelwised(image_key, transform, prob=prob, prob_per_channel=prob_per_channel)

    return Compose(
        [
            RandRotated(
                keys,
                range_x=angle,
                range_y=angle,
                range_z=angle,
                prob=prob_rotation,
                keep_size=True,
                mode=["bilinear", *nearest],
                padding_mode="zeros",
                allow_missing_keys=True,
            ),
            RandZoomd(
                keys,
                prob=prob_scale,
                min_zoom=scale_range[0],
                max_zoom=scale_range[1],
                mode=["trilinear", *nearest],
                padding_mode="constant",
                keep_size=True,
                allow_missing_keys=True,
            ),
            RandGaussianNoised(image_key, prob=prob_noise, mean=0.0, std=noise_std, sample_std=True),
            channelwise(RandGaussianSmooth(sigma, sigma, sigma, prob=1.0), prob_blur, prob_blur_per_channel),
            channelwise(RandScaleIntensity(_factor_range(brightness_range), prob=1.0), prob_brightness),
            channelwise(
                RandScaleIntensityFixedMean(
                    prob=1.0, factors=_factor_range(contrast_range), fixed_mean=True, preserve_range=True
                ),
                prob_contrast,
            ),
            channelwise(
                RandSimulateLowResolution(prob=1.0, zoom_range=low_res_zoom, downsample_mode="nearest"),
                prob_low_res,
                prob_low_res_per_channel,
            ),
            channelwise(RandAdjustContrast(prob=1.0, gamma=gamma_range, retain_stats=True), prob_gamma),
            *(RandFlipd(keys, prob=prob_flip, spatial_axis=axis, allow_missing_keys=True) for axis in range(3)),
        ]
    )


def _factor_range(multiplier_range: tuple[float, float]) -> tuple[float, float]:
    """MONAI scales by ``1 + factor``: a multiplier range (0.7, 1.3) is the factor range (-0.3, 0.3)."""
    return (multiplier_range[0] - 1.0, multiplier_range[1] - 1.0)
