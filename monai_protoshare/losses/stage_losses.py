"""Composite losses of stage 1 (eq. 19) and stage 3 (eq. 21), coefficients as config values (App. D.5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .classifier_l1 import ClassifierL1Loss
from .clustering_separation import ClusteringSeparationLoss
from .diversity import PrototypeDiversityLoss
from .fine_annotation import FineAnnotationLoss
from .mapping import MappingLoss
from .online_cam import OnlineCAMLoss

__all__ = ["ClassifierStageLoss", "LatentSpaceLoss"]


def _mean(terms: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    return torch.stack(terms).mean() if terms else like.new_zeros(())


class LatentSpaceLoss(nn.Module):
    """Stage 1, eq. (19)::

        L = λ_cls L_cls + λ_clst L_clst + λ_sep L_sep + λ_map/S Σ_s L_map^s + λ_OC/S Σ_s L_OC^s + λ_div L_div
            [+ λ_fine L_fine]

    with S the number of active scales (3 in eq. 19; 1 for the single-scale models, where it matches
    MProtoNet's weights). L_cls is the cross-entropy on the logits; clustering/separation follow the
    network's ownership (eq. 8-9 or 22-23). Terms a network lacks (no mapping module, no Online-CAM)
    are zero.

    Args:
        lambda_cls, lambda_clst, lambda_sep, lambda_map, lambda_oc, lambda_div: App. D.5 defaults
            1, 0.8, 0.08, 0.5, 0.05, 0.001.
        mapping_scale_factors, mapping_sparsity_weight: see :class:`MappingLoss`.
        class_weights: optional cross-entropy class weights (C,) (the paper uses plain cross-entropy).
        lambda_fine, fine_annotation: beyond the paper, FPN-IAIA-BL's fine-annotation loss (eq. 5,
            :class:`FineAnnotationLoss`, default tables when None); 0 (off) unless ``configs/ablations/fine.yaml``.

    Returns (forward):
        dict with the weighted total ``loss`` and the unweighted terms ``cls``, ``clst``, ``sep``,
        ``map``, ``oc``, ``div``, ``fine`` (scalars), for logging.
    """

    def __init__(
        self,
        lambda_cls: float = 1.0,
        lambda_clst: float = 0.8,
        lambda_sep: float = 0.08,
        lambda_map: float = 0.5,
        lambda_oc: float = 0.05,
        lambda_div: float = 0.001,
        mapping_scale_factors: tuple[float, ...] = (0.75, 0.875),
        mapping_sparsity_weight: float = 1.0,
        class_weights: list[float] | None = None,
        lambda_fine: float = 0.0,
        fine_annotation: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.weights = {
            "cls": lambda_cls,
            "clst": lambda_clst,
            "sep": lambda_sep,
            "map": lambda_map,
            "oc": lambda_oc,
            "div": lambda_div,
            "fine": lambda_fine,
        }
        self.clustering_separation = ClusteringSeparationLoss()
        self.mapping = MappingLoss(mapping_scale_factors, mapping_sparsity_weight)
        self.online_cam = OnlineCAMLoss()
        self.diversity = PrototypeDiversityLoss()
        self.fine_annotation = fine_annotation if fine_annotation is not None else FineAnnotationLoss()
        self.class_weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float)

    def forward(
        self, network: nn.Module, output, labels: torch.Tensor, masks: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``masks``: whole-tumour masks (B, 1, H, W, D), read only by the fine-annotation term."""
        weight = None if self.class_weights is None else self.class_weights.to(output.logits.device)
        terms = {"cls": F.cross_entropy(output.logits, labels, weight=weight)}
        terms["clst"], terms["sep"] = self.clustering_separation(network, output.similarities, labels)
        like = terms["cls"]
        terms["map"] = _mean(self.mapping(network, output) if self.weights["map"] else [], like)
        terms["oc"] = _mean(self.online_cam(output, labels), like)
        terms["div"] = self.diversity(network) if self.weights["div"] else like.new_zeros(())
        terms["fine"] = (
            self.fine_annotation(network, output, labels, masks) if self.weights["fine"] else like.new_zeros(())
        )
        terms["loss"] = sum(self.weights[k] * terms[k] for k in self.weights)
        return terms


class ClassifierStageLoss(nn.Module):
    """Stage 3, eq. (21): ``λ_cls L_cls + λ_L1 L_L1`` (L1 over all weights for shared prototypes, over the
    wrong-class weights for class-specific ones).

    Returns (forward): dict with ``loss``, ``cls`` and ``l1``.
    """

    def __init__(self, lambda_cls: float = 1.0, lambda_l1: float = 0.01) -> None:
        super().__init__()
        self.lambda_cls, self.lambda_l1 = lambda_cls, lambda_l1
        self.l1 = ClassifierL1Loss()

    def forward(self, network: nn.Module, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = {"cls": F.cross_entropy(logits, labels), "l1": self.l1(network)}
        terms["loss"] = self.lambda_cls * terms["cls"] + self.lambda_l1 * terms["l1"]
        return terms
