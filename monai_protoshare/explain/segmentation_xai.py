"""Explanations for any segmentation network: Seg-Grad-CAM, occlusion and Seg-Ablation-CAM (seed 004).

All three explain one output region r (a channel of the logits (B, R, H, W, D)) over a region of interest M, through
the score y_r = Σ_{v ∈ M} logit_r(v), "the summed-up pre-Softmax prediction scores for the selected class" (seed
004, after Vinogradova et al. 2020). M is the predicted region (logit_r > 0 on the unperturbed input, then kept
fixed), a box ``((x0, x1), (y0, y1), (z0, z1))`` (ends exclusive) or a user mask (H, W, D) / (B, 1, H, W, D).

- Seg-Grad-CAM (Vinogradova et al., 2020): α_c = mean_u ∂y_r/∂A_c(u) at the chosen layer A (B, C, h, w, d),
  map = ReLU(Σ_c α_c A_c), upsampled trilinearly to the input.
- Occlusion (Gipiškis & Kurasova, 2023): a ``window``³ box of the input set to ``baseline`` at every ``stride``
  position; each voxel gets the mean of y_r(x) − y_r(x occluded) over the boxes covering it.
- Seg-Ablation-CAM (Gipiškis et al., 2023, after Desai & Ramaswamy's Ablation-CAM): w_c = (y_r − y_r^{A_c=0}) / |y_r|
  (|y_r| rather than y_r, so a weight's sign says whether the channel supports the region even when the summed
  logits are negative), map = ReLU(Σ_c w_c A_c), upsampled.

A layer is named as in ``network.named_modules()``; its output (B, C, ..., h, w, d) may have extra dimensions
before the last three (e.g. ProtoSeg's ASPP, (B, S, E, h, w, d)): they are flattened into channels. Networks
should be in eval mode (batch statistics would mix the perturbed copies).

Example:
    >>> net = monai.networks.nets.SegResNet(in_channels=4, out_channels=3, init_filters=8).eval()
    >>> cam = seg_grad_cam(net, x, layer="up_layers.2", region=1)           # (B, 1, H, W, D)
    >>> occ = seg_occlusion(net, x, region=1, roi=((8, 24), (8, 24), (4, 20)), window=8)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from monai.utils import look_up_option
from torch import nn

__all__ = ["region_of_interest", "region_score", "seg_ablation_cam", "seg_grad_cam", "seg_occlusion"]

Roi = str | Sequence[Sequence[int]] | torch.Tensor


def region_of_interest(logits: torch.Tensor, region: int, roi: Roi = "predicted") -> torch.Tensor:
    """The mask M (B, 1, H, W, D) float of ``roi`` for region ``region`` of ``logits`` (B, R, H, W, D)."""
    if logits.ndim != 5 or not 0 <= region < logits.shape[1]:
        raise ValueError(f"logits must be (B, R, H, W, D) with region in 0..R-1; got {tuple(logits.shape)}, {region}.")
    shape = (logits.shape[0], 1, *logits.shape[2:])
    if isinstance(roi, str):
        look_up_option(roi, ("predicted",))
        return (logits[:, region : region + 1] > 0).to(logits.dtype)
    if isinstance(roi, torch.Tensor):
        if roi.shape not in (logits.shape[2:], shape):
            raise ValueError(f"roi mask must be (H, W, D) or {shape}; got {tuple(roi.shape)}.")
        return (roi > 0).to(logits.dtype).expand(shape).to(logits.device)
    if len(roi) != 3 or any(len(axis) != 2 for axis in roi):
        raise ValueError(f"roi box must be ((x0, x1), (y0, y1), (z0, z1)); got {roi!r}.")
    mask = logits.new_zeros(shape)
    mask[(slice(None), slice(None), *(slice(int(a), int(b)) for a, b in roi))] = 1
    return mask


def region_score(logits: torch.Tensor, region: int, mask: torch.Tensor) -> torch.Tensor:
    """y_r = Σ_{v ∈ M} logit_r(v) per case: (B,)."""
    return (logits[:, region : region + 1] * mask).flatten(1).sum(dim=1)


def _layer(network: nn.Module, layer: str) -> nn.Module:
    modules = dict(network.named_modules())
    return modules[look_up_option(layer, [name for name in modules if name])]


def _channels(activation: torch.Tensor) -> torch.Tensor:
    """(B, C, ..., h, w, d) -> (B, C', h, w, d): extra dimensions flattened into channels."""
    if activation.ndim < 5:
        raise ValueError(f"layer output must be (B, C, ..., h, w, d); got {tuple(activation.shape)}.")
    return activation.flatten(1, -4)


@contextmanager
def _hooked(module: nn.Module, hook: Callable) -> Iterator[None]:
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _cam(weights: torch.Tensor, activation: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """ReLU(Σ_c w_c A_c) upsampled to ``size``: weights (B, C), activation (B, C, h, w, d) -> (B, 1, *size)."""
    cam = F.relu(torch.einsum("bc,bchwd->bhwd", weights, activation))[:, None]
    return F.interpolate(cam, size=tuple(size), mode="trilinear") if cam.shape[2:] != tuple(size) else cam


def seg_grad_cam(network: nn.Module, x: torch.Tensor, layer: str, region: int, roi: Roi = "predicted") -> torch.Tensor:
    """Seg-Grad-CAM of region ``region`` over ``roi`` at ``layer``: (B, 1, H, W, D), see the module docstring."""
    captured: list[torch.Tensor] = []
    with _hooked(_layer(network, layer), lambda m, i, out: captured.append(out)), torch.enable_grad():
        logits = network(x)
        activation = captured[0]
        score = region_score(logits, region, region_of_interest(logits.detach(), region, roi))
        (grad,) = torch.autograd.grad(score.sum(), activation)  # cases are independent: one backward for all
    alpha = _channels(grad).mean(dim=(2, 3, 4))
    return _cam(alpha, _channels(activation.detach()), x.shape[2:])


def _boxes(size: Sequence[int], window: int, stride: int) -> list[tuple[slice, ...]]:
    starts = [sorted({*range(0, max(n - window, 0) + 1, stride), max(n - window, 0)}) for n in size]
    return [
        (slice(i, i + window), slice(j, j + window), slice(k, k + window))
        for i in starts[0]
        for j in starts[1]
        for k in starts[2]
    ]


@torch.no_grad()
def seg_occlusion(
    network: nn.Module,
    x: torch.Tensor,
    region: int,
    roi: Roi = "predicted",
    window: int = 8,
    stride: int | None = None,
    baseline: float = 0.0,
    batch_size: int = 8,
) -> torch.Tensor:
    """Occlusion map of region ``region`` over ``roi``: (B, 1, H, W, D), see the module docstring.

    Args:
        window: side of the cubic occluder, voxels. stride: its step (default ``window``: disjoint boxes; the last
            box of an axis is moved back to end at the border, so every voxel is covered).
        baseline: value the occluded voxels get in every channel (0 = the background of z-scored brains).
        batch_size: occluded copies per forward.
    """
    boxes = _boxes(x.shape[2:], window, stride or window)
    logits = network(x)
    masks = region_of_interest(logits, region, roi)
    references = region_score(logits, region, masks)
    maps = []
    for case, mask, reference in zip(x.split(1), masks.split(1), references):
        total, count = torch.zeros_like(case[:, :1]), torch.zeros_like(case[:, :1])
        for start in range(0, len(boxes), batch_size):
            chunk = boxes[start : start + batch_size]
            occluded = case.repeat(len(chunk), 1, 1, 1, 1)
            for j, box in enumerate(chunk):
                occluded[(j, slice(None), *box)] = baseline
            delta = reference - region_score(network(occluded), region, mask)
            for j, box in enumerate(chunk):
                total[(0, 0, *box)] += delta[j]
                count[(0, 0, *box)] += 1
        maps.append(total / count)
    return torch.cat(maps)


@torch.no_grad()
def seg_ablation_cam(
    network: nn.Module, x: torch.Tensor, layer: str, region: int, roi: Roi = "predicted", batch_size: int = 8
) -> torch.Tensor:
    """Seg-Ablation-CAM of region ``region`` over ``roi`` at ``layer``: (B, 1, H, W, D), see the module docstring."""
    module = _layer(network, layer)
    captured: list[torch.Tensor] = []
    with _hooked(module, lambda m, i, out: captured.append(out)):
        logits = network(x)
    activation = _channels(captured[0])
    mask = region_of_interest(logits, region, roi)
    reference = region_score(logits, region, mask)  # (B,)
    num_channels = activation.shape[1]
    weights = torch.empty(x.shape[0], num_channels, dtype=x.dtype, device=x.device)
    for b in range(x.shape[0]):
        for start in range(0, num_channels, batch_size):
            channels = list(range(start, min(start + batch_size, num_channels)))

            def ablate(m, i, out, channels=channels):
                out = out.clone()
                flat = out.flatten(1, -4)  # a view of the clone
                for j, c in enumerate(channels):
                    flat[j, c] = 0
                return out

            with _hooked(module, ablate):
                scores = region_score(network(x[b : b + 1].repeat(len(channels), 1, 1, 1, 1)), region, mask[b : b + 1])
            weights[b, start : start + len(channels)] = (reference[b] - scores) / reference[b].abs().clamp_min(1e-12)
    return _cam(weights, activation, x.shape[2:])
