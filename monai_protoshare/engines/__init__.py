"""Engines: the training schedule and the three-stage trainer."""

from .prototype_evaluator import PrototypeEvaluator
from .prototype_trainer import PrototypeTrainer, loss_terms
from .schedule import Stage, TrainingSchedule
from .similarity_batches import SimilarityBatches

__all__ = ["PrototypeEvaluator", "PrototypeTrainer", "SimilarityBatches", "Stage", "TrainingSchedule", "loss_terms"]
