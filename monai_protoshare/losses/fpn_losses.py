"""FPN-IAIA-BL's objective, eq. (4): ``CE + λ1 ℓ_clust + λ2 ℓ_sep + λ3 ℓ_ortho + λ4 ℓ_fine`` (stages A and C).

Cluster and separation are the class-specific eq. (22)-(23) of the project on a cosine similarity (Deformable
ProtoPNet), orthogonality is :class:`PrototypeOrthogonalityLoss`, the fine-annotation term
:class:`FineAnnotationLoss`. The paper gives no λ values; the defaults (config values) are the project's
clustering/separation weights (0.8, 0.08), λ_ortho = 0.1 and λ_fine = 0 (the fine term is switched on by
``configs/ablations/fine.yaml``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.utils import look_up_option
from torch import nn

from .clustering_separation import ClusteringSeparationLoss
from .fine_annotation import FineAnnotationLoss
from .orthogonality import PrototypeOrthogonalityLoss

__all__ = ["CLUSTER_SIMILARITIES", "FPNIAIABLLoss"]

#: the similarity cluster/separation act on: each prototype's best voxel (Deformable ProtoPNet), or eq. (3)
CLUSTER_SIMILARITIES = ("max_cosine", "focal")


class FPNIAIABLLoss(nn.Module):
    """Eq. (4) for a :class:`~monai_protoshare.networks.FPNIAIABL` (the trainer's stage-1 loss for this model).

    Args:
        lambda_cls, lambda_clst, lambda_sep, lambda_ortho, lambda_fine: coefficients of eq. (4).
        fine_annotation: the ℓ_fine module (default: :class:`FineAnnotationLoss` with its default tables).
        cluster_similarity: ``"max_cosine"`` (default; the cosine of each prototype's most similar voxel, as
            Deformable ProtoPNet's cluster and separation costs) or ``"focal"`` (eq. 3, the classifier's input).
        orthogonality_groups: see :class:`PrototypeOrthogonalityLoss`.

    Returns (forward):
        dict with the weighted total ``loss`` and the unweighted terms ``cls``, ``clst``, ``sep``, ``ortho``,
        ``fine``.
    """

    def __init__(
        self,
        lambda_cls: float = 1.0,
        lambda_clst: float = 0.8,
        lambda_sep: float = 0.08,
        lambda_ortho: float = 0.1,
        lambda_fine: float = 0.0,
        fine_annotation: nn.Module | None = None,
        cluster_similarity: str = "max_cosine",
        orthogonality_groups: str = "class_level",
    ) -> None:
        super().__init__()
        self.weights = {"cls": lambda_cls, "clst": lambda_clst, "sep": lambda_sep, "ortho": lambda_ortho}
        self.weights["fine"] = lambda_fine
        self.cluster_similarity = look_up_option(cluster_similarity, CLUSTER_SIMILARITIES)
        self.clustering_separation = ClusteringSeparationLoss()
        self.orthogonality = PrototypeOrthogonalityLoss(orthogonality_groups)
        self.fine_annotation = fine_annotation if fine_annotation is not None else FineAnnotationLoss()

    def forward(
        self, network: nn.Module, output, labels: torch.Tensor, masks: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        terms = {"cls": F.cross_entropy(output.logits, labels)}
        sims = output.similarities
        if self.cluster_similarity == "max_cosine":
            sims = torch.cat([a.flatten(2).amax(dim=-1) for a in output.attention], dim=1)
        terms["clst"], terms["sep"] = self.clustering_separation(network, sims, labels)
        terms["ortho"] = self.orthogonality(network)
        zero = terms["cls"].new_zeros(())
        terms["fine"] = self.fine_annotation(network, output, labels, masks) if self.weights["fine"] else zero
        terms["loss"] = sum(self.weights[k] * terms[k] for k in self.weights)
        return terms
