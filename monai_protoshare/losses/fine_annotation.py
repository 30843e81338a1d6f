"""Fine-annotation loss (FPN-IAIA-BL eq. 5, Supplement B) for every prototype model, and its data requirement.

Eq. (5) for sample i with class y and whole-tumour mask m_i (1 inside), prototype j of class c::

    ℓ_fine = Σ_i Σ_j ‖ λ_out(y, c) (1 − m_i) ⊙ PAM_ij + λ_in(y, c) m_i ⊙ PAM_ij ‖₂

The paper writes the outside term as ``λ_full(y, c) PAM_ij`` over the whole map; with λ_full = λ_out and a mask
coefficient λ_in − λ_out the two forms are equal, and this one lets the tables say directly what activation
costs outside and inside the tumour. PAM_ij is prototype j's activation map upsampled (trilinear, the 3D
bilinear) to the mask. Choices where the paper is silent:

- the maps: the mapping module's maps before spatial normalisation (``PrototypeOutput.masks``: eq. 12's M¹ for
  UM-ProtoShare, MProtoNet's soft masks, values in [0, 1]) for mapping networks; the per-voxel cosine similarity
  maps (``attention``, eq. 2) for ProtoPNet and FPN-IAIA-BL;
- the default tables (C × C, rows = sample class y, columns = prototype class c): λ_out = 1 everywhere (every
  prototype is penalised for activating outside the tumour) and λ_in = 1 − I (no prototype is penalised inside
  the tumour of its own class; a prototype of the other class is, so its whole map costs, which is IAIA-BL's
  original loss);
- class-agnostic prototypes (UM-ProtoShare) weight each prototype's term by their soft class coefficients ζ
  (eq. 7): ``Σ_c ζ_{c,j} ‖…(y, c)…‖₂``; for class-specific prototypes ζ is the ownership matrix, so this is eq. (5);
- the sum over samples is a mean over the batch (the loss then does not scale with the batch size).

The L2 norm grows with the square root of the mask's voxel count, so λ_fine depends on the input size.
Masks are never a training input otherwise (DESIGN §3): this loss is the documented exception, enabled only by
``configs/ablations/fine.yaml``, which loads the BraTS ``seg`` (any label > 0) through the training transforms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .prototype_ownership import class_coefficients

__all__ = ["FineAnnotationLoss", "fine_annotation_loss", "require_segmentations"]


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """√x with a zero (not infinite) gradient at x = 0, so a prototype that costs nothing gets no NaN."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


def fine_annotation_loss(
    maps: Sequence[torch.Tensor],
    masks: torch.Tensor,
    labels: torch.Tensor,
    coefficients: torch.Tensor,
    lambda_out: torch.Tensor,
    lambda_in: torch.Tensor,
) -> torch.Tensor:
    """Eq. (5), averaged over the batch.

    Args:
        maps: per scale, prototype activation maps (B, K_s, h_s, w_s, d_s); upsampled trilinearly to the masks.
        masks: m, (B, 1, H, W, D), 1 inside the tumour.
        labels: y, (B,).
        coefficients: class of each prototype, (C, K_total): the ownership matrix or ζ (eq. 7).
        lambda_out, lambda_in: (C, C) tables indexed [sample class y, prototype class c].

    Returns:
        Scalar.
    """
    if masks.ndim != 5 or masks.shape[1] != 1 or masks.shape[0] != labels.shape[0]:
        raise ValueError(f"masks must be (B, 1, H, W, D) with B = {labels.shape[0]}; got {tuple(masks.shape)}.")
    size = tuple(masks.shape[2:])
    inside = (masks > 0).to(maps[0].dtype)
    sq_in, sq_out = [], []
    for m in maps:
        pam = F.interpolate(m, size=size, mode="trilinear", align_corners=False) if m.shape[2:] != size else m
        squared = pam.square()
        sq_in.append((squared * inside).flatten(2).sum(dim=-1))  # (B, K_s)
        sq_out.append((squared * (1.0 - inside)).flatten(2).sum(dim=-1))
    sq_in, sq_out = torch.cat(sq_in, dim=1), torch.cat(sq_out, dim=1)  # (B, K_total)
    if coefficients.shape[1] != sq_in.shape[1]:
        raise ValueError(f"coefficients cover {coefficients.shape[1]} prototypes; the maps have {sq_in.shape[1]}.")
    # ‖a (1 − m) P + b m P‖² = a² ‖(1 − m) P‖² + b² ‖m P‖² (disjoint supports)
    a, b = lambda_out[labels].to(sq_in), lambda_in[labels].to(sq_in)  # (B, C)
    norms = _safe_sqrt(a.square()[:, :, None] * sq_out[:, None] + b.square()[:, :, None] * sq_in[:, None])  # (B,C,K)
    return (coefficients.to(norms)[None] * norms).sum(dim=(1, 2)).mean()


class FineAnnotationLoss(nn.Module):
    """Eq. (5) for a prototype network's forward output (see the module docstring for the choices).

    Args:
        lambda_out: (C, C) coefficients for activation outside the mask, [sample class, prototype class];
            default all ones.
        lambda_in: (C, C) coefficients for activation inside the mask; default ``1 − I``.

    Example:
        >>> loss = FineAnnotationLoss(lambda_out=[[1, 1], [1, 1]], lambda_in=[[0, 1], [1, 0]])
        >>> value = loss(network, network.explain(images), labels, masks)  # doctest: +SKIP
    """

    def __init__(
        self, lambda_out: Sequence[Sequence[float]] | None = None, lambda_in: Sequence[Sequence[float]] | None = None
    ) -> None:
        super().__init__()
        self.lambda_out = None if lambda_out is None else _table(lambda_out, "lambda_out")
        self.lambda_in = None if lambda_in is None else _table(lambda_in, "lambda_in")

    def tables(self, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(λ_out, λ_in), each (C, C), the defaults filled in; a table of another size raises a ValueError."""
        eye = torch.eye(num_classes)
        out = torch.ones(num_classes, num_classes) if self.lambda_out is None else self.lambda_out
        inside = 1.0 - eye if self.lambda_in is None else self.lambda_in
        for name, table in (("lambda_out", out), ("lambda_in", inside)):
            if table.shape != (num_classes, num_classes):
                raise ValueError(
                    f"{name} must be {num_classes}x{num_classes} (the network's classes); got {table.shape}."
                )
        return out, inside

    def forward(
        self, network: nn.Module, output: Any, labels: torch.Tensor, masks: torch.Tensor | None
    ) -> torch.Tensor:
        if masks is None:
            raise ValueError(
                "the fine-annotation loss needs the whole-tumour masks in the training batches ('mask'): load the "
                "segmentations with train#preprocessing#with_seg: true (configs/ablations/fine.yaml)."
            )
        maps = output.masks if output.masks else output.attention
        out, inside = self.tables(network.num_classes)
        return fine_annotation_loss(maps, masks, labels, class_coefficients(network), out, inside)


def _table(values: Sequence[Sequence[float]], name: str) -> torch.Tensor:
    table = torch.as_tensor(values, dtype=torch.float32)
    if table.ndim != 2 or table.shape[0] != table.shape[1] or bool((table < 0).any()):
        raise ValueError(f"{name} must be a square table of non-negative coefficients (C x C); got {values!r}.")
    return table


def require_segmentations(datalist: Sequence[dict[str, Any]], seg_key: str = "seg") -> list[dict[str, Any]]:
    """``datalist`` unchanged when every case has a segmentation file; else a ValueError naming the first without.

    The fine-annotation loss reads each training case's whole-tumour mask (``configs/ablations/fine.yaml``).
    """
    for item in datalist:
        if not item.get(seg_key):
            raise ValueError(
                f"the fine-annotation loss needs a segmentation for every training case; {item.get('subject_id')!r} "
                f"has none ('{seg_key}' is empty: no <case>_seg.nii[.gz] in its folder)."
            )
    return list(datalist)
