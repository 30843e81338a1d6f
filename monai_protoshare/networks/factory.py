"""Every model of Table 1 as a named configuration of one network family (App. E, F; DESIGN §5).

Switching model or ablation is a name (``build_network("um_protoshare_c")``) or a config value
(``network_def#name: um_protoshare_c`` in a bundle), never a code edit. Preset sizes (``paper``,
``cpu_small``) are keyword overrides: ``encoder_layers``, ``encoder_widths``, ``embedding_dim``.
"""

from __future__ import annotations

import os
from typing import Any

from monai.utils import look_up_option
from torch import nn

from .cnn import CNNClassifier
from .fpn_iaia_bl import FPNIAIABL
from .pretrained import imagenet_weights_file, load_imagenet_resnet, load_medicalnet_resnet
from .proto_seg import ProtoSegNetwork
from .protonet import PrototypeNetwork

__all__ = ["MODEL_CONFIGURATIONS", "build_network", "model_names"]

_SINGLE = {"scales": (3,), "prototypes_per_scale": (30,), "fusion": "none"}
_UM = {"scales": (1, 2, 3), "ownership": "shared", "mapping": "l1_soft", "online_cam": True}
_BASELINE = {**_SINGLE, "ownership": "class_specific"}

#: name -> keyword arguments of :class:`PrototypeNetwork` (or :class:`CNNClassifier` for ``cnn``).
MODEL_CONFIGURATIONS: dict[str, dict[str, Any]] = {
    # the CNN baseline = the warm-up model: encoder + decoder + gated fusion + add-on + GAP + linear
    "cnn": {"scales": (1, 2, 3), "fusion": "gated"},
    # App. F.1: same encoder, single scale s3, class-specific 15 + 15
    "protopnet": {**_BASELINE, "mapping": "none", "online_cam": False},
    "xprotonet": {**_BASELINE, "mapping": "plain", "online_cam": False},
    "mprotonet": {**_BASELINE, "mapping": "minmax_soft", "online_cam": True},
    # MAProtoNet's public code: encoder cut after layer1 with quadruplet attention, stem + layer1 fused
    # into the mapping module, single-scale class-specific prototypes on layer1's features
    "maprotonet": {
        **_BASELINE,
        "encoder_layers": (3,),
        "encoder_widths": (64,),
        "encoder_attention": "quadruplet",
        "scales": (2,),
        "mapping": "minmax_soft",
        "online_cam": True,
        "mapping_feature_fusion": True,
    },
    # App. E ablations; E2 is the default UM-ProtoShare
    "um_protoshare_a1": {**_UM, **_SINGLE, "ownership": "class_specific"},
    "um_protoshare_a2": {**_UM, **_SINGLE},
    "um_protoshare_b": {**_UM, "fusion": "none", "prototypes_per_scale": (10, 10, 10)},
    "um_protoshare_c": {**_UM, "fusion": "concat", "prototypes_per_scale": (10, 10, 10)},
    "um_protoshare_d": {**_UM, "fusion": "gated", "prototypes_per_scale": (10, 10, 10)},
    "um_protoshare_e1": {**_UM, "fusion": "gated", "prototypes_per_scale": (15, 9, 6)},
    "um_protoshare_e2": {**_UM, "fusion": "gated", "prototypes_per_scale": (9, 15, 6)},
    "um_protoshare_e3": {**_UM, "fusion": "gated", "prototypes_per_scale": (6, 9, 15)},
    # FPN-IAIA-BL (seed 003): same encoder, feature pyramid, 5 prototypes per (level, class): 15 + 15
    "fpn_iaia_bl": {"prototypes_per_level_class": ((5, 5), (5, 5), (5, 5))},
}
MODEL_CONFIGURATIONS["um_protoshare"] = MODEL_CONFIGURATIONS["um_protoshare_e2"]
#: segmentation networks (issue 23): built by name like the models above, but not Table-1 classifiers, so not in
#: :func:`model_names`.
SEGMENTATION_NETWORKS: dict[str, type[nn.Module]] = {"proto_seg": ProtoSegNetwork}
#: Table-1 models with their own class (the others are PrototypeNetwork, or CNNClassifier.build for "cnn")
_MODEL_CLASSES: dict[str, type[nn.Module]] = {"fpn_iaia_bl": FPNIAIABL}

_CNN_KEYS = ("in_channels", "num_classes", "encoder_layers", "encoder_widths", "encoder_attention", "fusion",
             "scales", "embedding_dim", "add_on_activation")  # fmt: skip


def model_names() -> list[str]:
    """Valid names for :func:`build_network`."""
    return sorted(MODEL_CONFIGURATIONS)


def build_network(
    name: str = "um_protoshare",
    pretrained: str | None = None,
    pretrained_path: str | os.PathLike | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a Table-1 model by name, with keyword overrides (preset sizes, ablation switches).

    Args:
        name: one of :func:`model_names` (case-insensitive; ``-`` and ``_`` are equivalent).
        pretrained: ``None``, ``"imagenet"`` (inflated torchvision ResNet-152, App. A.1) or ``"medicalnet"``.
        pretrained_path: local weights file for ``pretrained``; for ``"imagenet"`` it defaults to torchvision's cached
            ResNet-152 file (:func:`~monai_protoshare.networks.pretrained.imagenet_weights_file`).
        overrides: keyword arguments of :class:`PrototypeNetwork` / :meth:`CNNClassifier.build`,
            applied on top of the named configuration (lists are accepted for tuples).

    Raises:
        ValueError: unknown name (with the closest valid one), unknown override, bad value.

    Example:
        >>> net = build_network("mprotonet", encoder_layers=[1, 1], encoder_widths=[16, 32], embedding_dim=32)
        >>> net.ownership, net.mapping, net.scales
        ('class_specific', 'minmax_soft', (3,))
    """
    try:
        key = look_up_option(str(name).lower().replace("-", "_"), model_names() + sorted(SEGMENTATION_NETWORKS))
    except ValueError as err:
        raise ValueError(f"build_network(name={name!r}): unknown model name. {err}") from None
    kwargs = {
        **MODEL_CONFIGURATIONS.get(key, {}),
        **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()},
    }
    if key == "cnn":
        unknown = sorted(set(kwargs) - set(_CNN_KEYS))
        if unknown:
            raise ValueError(f"build_network('cnn') got unknown arguments {unknown}; valid: {list(_CNN_KEYS)}.")
        network = CNNClassifier.build(**kwargs)
    else:
        try:
            network = SEGMENTATION_NETWORKS.get(key, _MODEL_CLASSES.get(key, PrototypeNetwork))(**kwargs)
        except TypeError as err:
            raise ValueError(f"build_network({key!r}): {err}") from None
    if pretrained is not None:
        loader = look_up_option(pretrained, {"imagenet": load_imagenet_resnet, "medicalnet": load_medicalnet_resnet})
        if pretrained == "imagenet":
            pretrained_path = imagenet_weights_file(pretrained_path)
        elif pretrained_path is None:
            raise ValueError(f"pretrained={pretrained!r} needs pretrained_path, a local weights file.")
        loader(network.encoder if key in SEGMENTATION_NETWORKS else network.backbone.encoder, pretrained_path)
    return network
