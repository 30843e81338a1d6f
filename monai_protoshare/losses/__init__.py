"""Losses of the three-stage training (paper §2.3, App. B)."""

from .classifier_l1 import ClassifierL1Loss, classifier_l1_loss
from .clustering_separation import (
    ClusteringSeparationLoss,
    class_agnostic_clustering,
    class_agnostic_separation,
    class_specific_clustering,
    class_specific_separation,
)
from .diversity import PrototypeDiversityLoss, prototype_diversity_loss
from .fine_annotation import FineAnnotationLoss, fine_annotation_loss, require_segmentations
from .fpn_losses import FPNIAIABLLoss
from .mapping import MappingLoss, mapping_loss
from .online_cam import OnlineCAMLoss, online_cam_loss
from .orthogonality import PrototypeOrthogonalityLoss, prototype_orthogonality_loss
from .prototype_ownership import class_coefficients, soft_class_coefficients
from .stage_losses import ClassifierStageLoss, LatentSpaceLoss

__all__ = [
    "ClassifierL1Loss",
    "ClassifierStageLoss",
    "ClusteringSeparationLoss",
    "FPNIAIABLLoss",
    "FineAnnotationLoss",
    "LatentSpaceLoss",
    "MappingLoss",
    "OnlineCAMLoss",
    "PrototypeDiversityLoss",
    "PrototypeOrthogonalityLoss",
    "class_agnostic_clustering",
    "class_agnostic_separation",
    "class_coefficients",
    "class_specific_clustering",
    "class_specific_separation",
    "classifier_l1_loss",
    "fine_annotation_loss",
    "mapping_loss",
    "online_cam_loss",
    "prototype_diversity_loss",
    "prototype_orthogonality_loss",
    "require_segmentations",
    "soft_class_coefficients",
]
