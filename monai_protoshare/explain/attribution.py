"""Class attribution maps M(x) for AP and IDS (App. F.2; DESIGN §8), for every model of Table 1.

All functions return tensors at the input's spatial size, (B, 1, H, W, D), for a given target class per
case (the ground-truth class in the paper's evaluation). File output is elsewhere
(:mod:`monai_protoshare.explain.evidence_writer`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.utils import look_up_option
from monai.visualize import GradCAM, OcclusionSensitivity
from torch import nn

from ..losses.prototype_ownership import class_coefficients
from ..networks import CNNClassifier, PrototypeNetwork, PrototypeOutput

__all__ = [
    "CNN_ATTRIBUTIONS",
    "class_attribution",
    "gradcam_attribution",
    "occlusion_attribution",
    "prototype_class_maps",
    "prototype_scale_maps",
    "upsample_to",
]

CNN_ATTRIBUTIONS = ("gradcam", "occlusion")


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


def prototype_scale_maps(
    network: PrototypeNetwork, output: PrototypeOutput, target: torch.Tensor
) -> list[torch.Tensor]:
    """Per-scale class maps at their own resolution, before upsampling, (B, 1, H_s, W_s, D_s) each.

    For scale s and class c = ``target``: the mean of the maps of the prototypes supporting c
    (K⁺_(s,c) = {k: ζ_{c,k} > 0}, eq. 27; for class-specific prototypes the ones c owns, eq. 26),
    multiplied by the scale's voxel count H_s·W_s·D_s. With the L1-normalised maps of eq. (13) this makes
    each scale's map a density relative to uniform attention, so no scale dominates the sum of eq. (28)
    by its resolution alone (DESIGN §8). A scale with no supporting prototype contributes zeros.
    """
    coefficients = class_coefficients(network)[target] > 0  # (B, K_total)
    maps = []
    for i, sl in enumerate(network.scale_slices()):
        attention = _protopnet_maps(network, output, i) if network.mapping == "none" else output.attention[i]
        support = coefficients[:, sl].to(attention.dtype)  # (B, K_s)
        count = support.sum(dim=1).clamp_min(1.0)
        mean = torch.einsum("bk,bkhwd->bhwd", support, attention) / count.view(-1, 1, 1, 1)
        maps.append((mean * attention[0, 0].numel()).unsqueeze(1))
    return maps


def prototype_class_maps(
    network: PrototypeNetwork, output: PrototypeOutput, target: torch.Tensor, size
) -> torch.Tensor:
    """Eq. (28) (eq. 26 for single-scale models): Σ_s UpSample(density-rescaled mean map), (B, 1, *size)."""
    return sum(upsample_to(m, size) for m in prototype_scale_maps(network, output, target))


def gradcam_attribution(
    network: CNNClassifier, images: torch.Tensor, target: torch.Tensor, target_layer: str = "add_ons.0.act2"
) -> torch.Tensor:
    """Grad-CAM (``monai.visualize.GradCAM``) of the target class at ``target_layer``, (B, 1, H, W, D).

    The default layer is the output of the finest scale's add-on (the last convolution block before the
    GAP head, at the highest resolution). MONAI's GradCAM scores one class index per call, so cases are
    grouped by target class.
    """
    cam = GradCAM(nn_module=network, target_layers=target_layer)
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
def _prototype_attribution(network: PrototypeNetwork, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    output = network.explain(images, online_cam=False)
    return prototype_class_maps(network, output, target, images.shape[2:])


def class_attribution(
    network: nn.Module, images: torch.Tensor, target: torch.Tensor, method: str | None = None
) -> torch.Tensor:
    """The attribution map M(x) of App. F.2 for class ``target`` of each case, (B, 1, H, W, D).

    Args:
        network: a :class:`PrototypeNetwork` (eq. 26/28, ProtoPNet top-α maps) or :class:`CNNClassifier`.
        images: (B, 4, H, W, D).
        target: (B,) class per case (the ground truth for AP/IDS).
        method: for a CNN, ``"gradcam"`` (default) or ``"occlusion"``; ignored for prototype networks.
    """
    network.eval()
    if isinstance(network, PrototypeNetwork):
        return _prototype_attribution(network, images, target)
    method = look_up_option(method or "gradcam", CNN_ATTRIBUTIONS)
    if method == "gradcam":
        return gradcam_attribution(network, images, target)
    with torch.no_grad():
        return occlusion_attribution(network, images, target)
