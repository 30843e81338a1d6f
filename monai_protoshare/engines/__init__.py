"""Engines: the training schedule and the three-stage trainer."""

from .prototype_evaluator import PrototypeEvaluator
from .prototype_trainer import PrototypeTrainer, loss_terms
from .schedule import Stage, TrainingSchedule

__all__ = ["PrototypeEvaluator", "PrototypeTrainer", "Stage", "TrainingSchedule", "loss_terms"]
