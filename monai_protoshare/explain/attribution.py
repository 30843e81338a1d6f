"""Class attribution maps M(x) for AP and IDS (App. F.2; DESIGN §8), for every model of Table 1.

All functions return tensors at the input's spatial size, (B, 1, H, W, D), for a given target class per
case (the ground-truth class in the paper's evaluation). File output is elsewhere
(:mod:`monai_protoshare.explain.evidence_writer`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.utils import look_up_option
from monai.visualize import GradCAM, GradCAMpp, OcclusionSensitivity
from torch import nn

from ..losses.prototype_ownership import class_coefficients
from ..networks import FPNIAIABL, CNNClassifier, PrototypeNetwork, PrototypeOutput
from ..networks.modes import evaluating

__all__ = [
    "CLASS_MAPS",
    "CNN_ATTRIBUTIONS",
    "DEFAULT_CLASS_MAP",
    "DEFAULT_PROTOPNET_MAP",
    "PROTOPNET_MAPS",
    "class_attribution",
    "gradcam_attribution",
    "occlusion_attribution",
    "prototype_class_maps",
    "prototype_maps",
    "prototype_scale_maps",
    "upsample_to",
]

CNN_ATTRIBUTIONS = ("gradcam", "gradcampp", "occlusion")
#: Readings of eq. (28)'s per-prototype maps M_{c,s}^k (DESIGN §8; :func:`prototype_maps`). The paper leaves open which
#: map enters and it moves AP a lot, so every evaluation reports AP under each; "density" is the default.
CLASS_MAPS = ("density", "eq28", "eq12")
DEFAULT_CLASS_MAP = "density"
#: ProtoPNet's per-prototype map (App. F.2): the similarity at its top-α voxels, zero elsewhere (the paper's text), or
#: the whole per-voxel similarity map (MProtoNet's code, ``reference/peers.md`` §7).
PROTOPNET_MAPS = ("topk", "similarity")
DEFAULT_PROTOPNET_MAP = "topk"


def upsample_to(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Trilinear upsampling (align_corners=False, as captum/the peers) of (B, C, h, w, d) maps to ``size``."""
    if tuple(maps.shape[2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=tuple(size), mode="trilinear", align_corners=False)


def _protopnet_maps(network: PrototypeNetwork, output: PrototypeOutput, scale: int) -> torch.Tensor:
    """ProtoPNet (App. F.2): each prototype's per-voxel similarity kept at its top-α voxels, zero elsewhere."""
    sims = output.attention[scale]
    flat = sims.flatten(2)
    threshold = flat.topk(network.topk_count(flat.shape[-1]), dim=-1).values[..., -1:]
    return torch.where(flat >= threshold, flat, torch.zeros_like(flat)).view_as(sims)


def prototype_maps(
    network: PrototypeNetwork,
    output: PrototypeOutput,
    class_map: str = DEFAULT_CLASS_MAP,
    protopnet_map: str = DEFAULT_PROTOPNET_MAP,
) -> list[torch.Tensor]:
    """The per-prototype maps M_{c,s}^k that enter eq. (26)/(28) under a convention, (B, K_s, H_s, W_s, D_s) per scale.

    ``class_map`` (:data:`CLASS_MAPS`):

    - ``"eq28"``: eq. (28) as written, on the maps the network uses for its descriptors: eq. (13)'s L1-normalised
      maps for UM-ProtoShare (each sums to 1 over its scale, so a coarse scale's values are larger and it dominates
      the sum of eq. 28 by its resolution alone).
    - ``"density"`` (default): those maps × the scale's voxel count H_s·W_s·D_s: with eq. (13) each map becomes a
      density relative to uniform attention (mean 1), so every scale weighs alike in the sum.
    - ``"eq12"``: the maps before the spatial L1 normalisation (M¹ of eq. 12, in [0, 1]).

    Mapping modes without an L1 step (XProtoNet, MProtoNet, MAProtoNet) and ProtoPNet have one map, so ``"eq12"``
    equals ``"eq28"``; with one scale, ``"density"`` is ``"eq28"`` times a constant (the same AP and IDS).
    ProtoPNet's map is chosen by ``protopnet_map`` (:data:`PROTOPNET_MAPS`): ``"topk"`` keeps each prototype's
    per-voxel similarity at its top-α voxels (App. F.2), ``"similarity"`` the whole per-voxel similarity map.
    FPN-IAIA-BL always uses the whole map (its prototype activation map, Supplement B), so its class map is the mean
    of a class's prototypes' upsampled activation maps summed over levels under ``"eq28"`` (each level × its voxel
    count under ``"density"``; ``"eq12"`` equals ``"eq28"``).

    Raises:
        ValueError: on an unknown convention (suggesting the closest).
    """
    class_map = look_up_option(class_map, CLASS_MAPS)
    protopnet_map = look_up_option(protopnet_map, PROTOPNET_MAPS)
    maps = []
    for i in range(len(output.attention)):
        if network.mapping == "none":
            topk = protopnet_map == "topk" and not isinstance(network, FPNIAIABL)
            m = _protopnet_maps(network, output, i) if topk else output.attention[i]
        else:
            m = output.masks[i] if class_map == "eq12" and output.masks else output.attention[i]
        maps.append(m * m[0, 0].numel() if class_map == "density" else m)
    return maps


def prototype_scale_maps(
    network: PrototypeNetwork,
    output: PrototypeOutput,
    target: torch.Tensor,
    class_map: str = DEFAULT_CLASS_MAP,
    protopnet_map: str = DEFAULT_PROTOPNET_MAP,
) -> list[torch.Tensor]:
    """Per-scale class maps at their own resolution, before upsampling, (B, 1, H_s, W_s, D_s) each.

    For scale s and class c = ``target``: the mean of the maps (:func:`prototype_maps` under ``class_map`` and
    ``protopnet_map``) of the prototypes supporting c (K⁺_(s,c) = {k: ζ_{c,k} > 0}, eq. 27; for class-specific
    prototypes the ones c owns, eq. 26). A scale with no supporting prototype contributes zeros.
    """
    coefficients = class_coefficients(network)[target] > 0  # (B, K_total)
    maps = []
    for sl, attention in zip(network.scale_slices(), prototype_maps(network, output, class_map, protopnet_map)):
        support = coefficients[:, sl].to(attention.dtype)  # (B, K_s)
        count = support.sum(dim=1).clamp_min(1.0)
        mean = torch.einsum("bk,bkhwd->bhwd", support, attention) / count.view(-1, 1, 1, 1)
        maps.append(mean.unsqueeze(1))
    return maps


def prototype_class_maps(
    network: PrototypeNetwork,
    output: PrototypeOutput,
    target: torch.Tensor,
    size,
    class_map: str = DEFAULT_CLASS_MAP,
    protopnet_map: str = DEFAULT_PROTOPNET_MAP,
) -> torch.Tensor:
    """Eq. (28) (eq. 26 for single-scale models): Σ_s UpSample(mean map of scale s), (B, 1, *size).

    Example:
        >>> from monai_protoshare.networks import build_network
        >>> net = build_network("um_protoshare", encoder_layers=(1, 1), encoder_widths=(4, 8), embedding_dim=8)
        >>> out = net.eval().explain(torch.randn(1, 4, 16, 16, 8))
        >>> literal = prototype_class_maps(net, out, torch.tensor([1]), (16, 16, 8), class_map="eq28")
        >>> literal.shape
        torch.Size([1, 1, 16, 16, 8])
    """
    scale_maps = prototype_scale_maps(network, output, target, class_map, protopnet_map)
    return sum(upsample_to(m, size) for m in scale_maps)


def gradcam_attribution(
    network: CNNClassifier,
    images: torch.Tensor,
    target: torch.Tensor,
    target_layer: str = "add_ons.0.act2",
    plus_plus: bool = False,
) -> torch.Tensor:
    """Grad-CAM (``monai.visualize.GradCAM``) of the target class at ``target_layer``, (B, 1, H, W, D); with
    ``plus_plus`` Grad-CAM++ (``monai.visualize.GradCAMpp``, Chattopadhay et al. 2018) at the same layer.

    The default layer is the output of the finest scale's add-on (the last convolution block before the
    GAP head, at the highest resolution). MONAI's GradCAM scores one class index per call, so cases are
    grouped by target class.
    """
    cam = (GradCAMpp if plus_plus else GradCAM)(nn_module=network, target_layers=target_layer)
    out = images.new_zeros((images.shape[0], 1, *images.shape[2:]))
    for c in target.unique().tolist():
        idx = (target == c).nonzero().flatten()
        with torch.enable_grad():
            out[idx] = cam(images[idx], class_idx=int(c)).detach().to(out.dtype)
    return out


def occlusion_attribution(
    network: nn.Module, images: torch.Tensor, target: torch.Tensor, window: int = 11, stride: int = 5, n_batch: int = 16
) -> torch.Tensor:
    """Occlusion sensitivity (App. F.2): windows of ``window`` voxels moved by ``stride``, replaced by 0,
    ``monai.visualize.OcclusionSensitivity`` on the logits. The attribution is the drop of the target
    class logit (higher = more important), (B, 1, H, W, D)."""
    occlusion = OcclusionSensitivity(
        nn_module=network,
        mask_size=window,
        n_batch=n_batch,
        verbose=False,
        mode=0.0,
        overlap=1.0 - stride / window,
        activate=False,
    )
    baseline = network(images)  # (B, C)
    maps = []
    for b in range(images.shape[0]):
        occluded, _ = occlusion(images[b : b + 1])  # (1, C, H, W, D): logits with each voxel's windows occluded
        c = int(target[b])
        maps.append(baseline[b, c] - occluded[:, c : c + 1].as_tensor())
    return torch.cat(maps).to(images.dtype)


@torch.no_grad()
def _prototype_attribution(
    network: PrototypeNetwork, images: torch.Tensor, target: torch.Tensor, class_map: str, protopnet_map: str
) -> torch.Tensor:
    output = network.explain(images, online_cam=False)
    return prototype_class_maps(network, output, target, images.shape[2:], class_map, protopnet_map)


def class_attribution(
    network: nn.Module,
    images: torch.Tensor,
    target: torch.Tensor,
    method: str | None = None,
    class_map: str = DEFAULT_CLASS_MAP,
    protopnet_map: str = DEFAULT_PROTOPNET_MAP,
) -> torch.Tensor:
    """The attribution map M(x) of App. F.2 for class ``target`` of each case, (B, 1, H, W, D).

    Args:
        network: a :class:`PrototypeNetwork` (eq. 26/28, ProtoPNet top-α maps) or :class:`CNNClassifier`.
        images: (B, 4, H, W, D).
        target: (B,) class per case (the ground truth for AP/IDS).
        method: for a CNN, ``"gradcam"`` (default), ``"gradcampp"`` or ``"occlusion"``; ignored for prototype
            networks.
        class_map, protopnet_map: prototype networks' map convention (:func:`prototype_maps`); ignored for a CNN.
    """
    with evaluating(network):
        if isinstance(network, PrototypeNetwork):
            return _prototype_attribution(network, images, target, class_map, protopnet_map)
        method = look_up_option(method or "gradcam", CNN_ATTRIBUTIONS)
        if method in ("gradcam", "gradcampp"):
            return gradcam_attribution(network, images, target, plus_plus=method == "gradcampp")
        with torch.no_grad():
            return occlusion_attribution(network, images, target)
