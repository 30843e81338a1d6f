"""Encoder initialisation from local pretrained files: inflated 2D ImageNet ResNet-152 (App. A.1) or MedicalNet.

Nothing is downloaded: the ImageNet weights are torchvision's ResNet-152 state dict from its cache
(``<torch.hub.get_dir()>/checkpoints/resnet152-*.pth``, filled by any torchvision download of the weights) or a
file the user points at (``pretrained_path``; e.g. ``resnet152-f82ba261.pth`` copied from a machine with internet
access). Files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from .encoder import ResNetEncoder

__all__ = [
    "IMAGENET_CACHE_PATTERN",
    "imagenet_weights_file",
    "inflate_resnet2d_state_dict",
    "load_imagenet_resnet",
    "load_medicalnet_resnet",
    "medicalnet_state_dict",
]

logger = logging.getLogger(__name__)

#: torchvision's cached ResNet-152 ImageNet state dicts (IMAGENET1K_V1 ``resnet152-394f9c45.pth``, V2 ``-f82ba261``)
IMAGENET_CACHE_PATTERN = "resnet152-*.pth"
#: where torchvision serves the V2 weights, for the error message only (nothing is downloaded here)
_IMAGENET_URL = "https://download.pytorch.org/models/resnet152-f82ba261.pth"


def inflate_resnet2d_state_dict(
    state_dict_2d: Mapping[str, torch.Tensor], encoder: ResNetEncoder
) -> dict[str, torch.Tensor]:
    """Inflate a torchvision 2D ResNet state dict into ``encoder``'s 3D tensors (App. A.1).

    Each 2D kernel (O, I, kh, kw) is repeated along depth (the last axis, D of (H, W, D)) and divided by
    the depth ``kd``, so a volume constant along D gives the 2D response. ``conv1`` gets a 4th input
    channel equal to the mean of the three RGB channels. BN weights, biases, running statistics and
    ``num_batches_tracked`` are copied. Keys of layers the truncated encoder lacks (layer3, layer4, fc)
    are ignored; tensors of modules the 2D ResNet lacks (MAProtoNet's quadruplet ``attention`` in each bottleneck)
    keep the encoder's initialisation.

    Args:
        state_dict_2d: torchvision key names (``conv1.weight``, ``layer1.0.bn1.running_mean`` …).
        encoder: the target encoder; its widths must match the 2D network's (ResNet-152: (64, 128)).

    Returns:
        A complete state dict for ``encoder``.

    Raises:
        KeyError: a tensor the encoder needs is missing from the 2D state dict.
        ValueError: a tensor has an incompatible shape (e.g. ``cpu_small`` widths).
    """
    target = encoder.state_dict()
    inflated = {}
    for key, ref in target.items():
        if key not in state_dict_2d and ".attention." in key:
            inflated[key] = ref
            continue
        if key not in state_dict_2d:
            raise KeyError(
                f"2D state dict has no '{key}': expected a torchvision ResNet-152 state dict covering "
                "conv1, bn1, layer1 and layer2."
            )
        src = state_dict_2d[key]
        if ref.ndim == 5 and src.ndim == 4:
            depth = ref.shape[-1]
            src = src.unsqueeze(-1).repeat(1, 1, 1, 1, depth) / depth
            if key == "conv1.weight" and ref.shape[1] == src.shape[1] + 1:
                src = torch.cat([src, src.mean(dim=1, keepdim=True)], dim=1)
        if src.shape != ref.shape:
            raise ValueError(
                f"cannot inflate '{key}': the encoder expects {tuple(ref.shape)}, the 2D weights give "
                f"{tuple(src.shape)} (ImageNet weights need the paper preset: widths (64, 128))."
            )
        inflated[key] = src.to(ref.dtype)
    return inflated


def medicalnet_state_dict(state_dict_3d: Mapping[str, torch.Tensor], encoder: ResNetEncoder) -> dict[str, torch.Tensor]:
    """Convert a MedicalNet 3D ResNet state dict (Chen et al., 2019) to ``encoder``'s layout.

    MedicalNet kernels are ordered (O, I, kd, kh, kw) for (D, H, W) volumes and ``conv1`` has one input
    channel; they are permuted to (O, I, kh, kw, kd) and ``conv1`` is repeated over the input sequences
    and divided by their number. A ``module.`` prefix (DataParallel) is stripped.
    """
    state = {k.removeprefix("module."): v for k, v in state_dict_3d.items()}
    target = encoder.state_dict()
    converted = {}
    for key, ref in target.items():
        if key not in state:
            raise KeyError(f"MedicalNet state dict has no '{key}'.")
        src = state[key]
        if src.ndim == 5:
            src = src.permute(0, 1, 3, 4, 2)
            if key == "conv1.weight" and src.shape[1] == 1:
                src = src.repeat(1, ref.shape[1], 1, 1, 1) / ref.shape[1]
        if src.shape != ref.shape:
            raise ValueError(
                f"MedicalNet '{key}' has shape {tuple(src.shape)}; the encoder expects {tuple(ref.shape)}."
            )
        converted[key] = src.to(ref.dtype)
    return converted


def _load(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} weights file not found: '{path}' (no download is attempted).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated download, not a torch file, a pickle with code in it, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{what} weights file '{path}' cannot be loaded as a state dict: {first}") from None
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{what} weights file '{path}' does not hold a state dict.")
    return dict(state)


def imagenet_weights_file(path: str | os.PathLike | None = None) -> Path:
    """The ImageNet ResNet-152 state-dict file of App. A.1: ``path`` if given, else torchvision's cached copy.

    Args:
        path: a local file (the bundle option ``pretrained_path``); None looks in torchvision's cache,
            ``<torch.hub.get_dir()>/checkpoints/resnet152-*.pth`` (the first in name order when there are several).

    Raises:
        FileNotFoundError: ``path`` does not exist, or none is given and the cache holds no ResNet-152 file: the
            message names the option ``pretrained_path``, the file looked for and how to get it.
    """
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"pretrained_path: ImageNet ResNet-152 weights file not found: '{path}'.")
        return Path(path)
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(cache.glob(IMAGENET_CACHE_PATTERN))
    if not found:
        raise FileNotFoundError(
            f"pretrained: imagenet needs torchvision's ResNet-152 ImageNet weights, but '{cache / IMAGENET_CACHE_PATTERN}'"
            f" matches no file and the option pretrained_path is not set (nothing is downloaded). Set pretrained_path "
            f"to a local copy of {_IMAGENET_URL} or place it in '{cache}' (torchvision.models.resnet152(weights="
            f"'IMAGENET1K_V2') does, when online); pretrained: null starts from random weights instead."
        )
    return found[0]


def load_imagenet_resnet(encoder: ResNetEncoder, path: str | os.PathLike) -> ResNetEncoder:
    """Initialise ``encoder`` from a local torchvision ResNet-152 ImageNet state-dict file (App. A.1)."""
    encoder.load_state_dict(inflate_resnet2d_state_dict(_load(path, "ImageNet ResNet"), encoder))
    logger.info("encoder initialised from inflated ImageNet weights '%s'", path)
    return encoder


def load_medicalnet_resnet(encoder: ResNetEncoder, path: str | os.PathLike) -> ResNetEncoder:
    """Initialise ``encoder`` from a local MedicalNet 3D ResNet state-dict file."""
    encoder.load_state_dict(medicalnet_state_dict(_load(path, "MedicalNet"), encoder))
    logger.info("encoder initialised from MedicalNet weights '%s'", path)
    return encoder
