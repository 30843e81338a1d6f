"""Engines: the training schedule and the three-stage trainer."""

from .distributed import finish_distributed
from .prototype_evaluator import PrototypeEvaluator
from .prototype_trainer import PrototypeTrainer, loss_terms
from .schedule import Stage, TrainingSchedule
from .similarity_batches import SimilarityBatches

__all__ = [
    "PrototypeEvaluator",
    "PrototypeTrainer",
    "SimilarityBatches",
    "Stage",
    "TrainingSchedule",
    "finish_distributed",
    "loss_terms",
]
