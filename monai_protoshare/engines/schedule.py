"""The training schedule of App. D.5 as a pure mapping from a global epoch number to a stage."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from enum import Enum

__all__ = ["Stage", "TrainingSchedule"]


class Stage(str, Enum):
    """Training stages. ``WARMUP``: the CNN model (encoder, decoder, gates, add-ons, GAP head);
    ``LATENT``: stage 1 (eq. 19); ``CLASSIFIER``: stage 3 (eq. 21). Stage 2, the push (eq. 20), happens
    between a block of latent epochs and the classifier epochs that follow it."""

    WARMUP = "warmup"
    LATENT = "latent"
    CLASSIFIER = "classifier"


@dataclass(frozen=True)
class TrainingSchedule:
    """Global epochs 1..N: ``warmup_epochs`` warm-up epochs, then ``latent_epochs`` stage-1 epochs in blocks
    of ``push_interval``; after each block a push, then ``classifier_epochs`` stage-3 epochs.

    The paper (App. D.5): 50 warm-up, 100 stage-1 epochs, a push every 10, 10 stage-3 epochs after each
    push, i.e. 250 epochs; the final model is the one after the last push and its stage 3. A trailing
    block shorter than ``push_interval`` is also followed by a push, so training always ends with one.

    Example:
        >>> s = TrainingSchedule(warmup_epochs=1, latent_epochs=3, push_interval=2, classifier_epochs=1)
        >>> [s.stage(e).value for e in range(1, s.total_epochs + 1)]
        ['warmup', 'latent', 'latent', 'classifier', 'latent', 'classifier']
        >>> [e for e in range(1, s.total_epochs + 1) if s.push_after(e)]
        [3, 5]
    """

    warmup_epochs: int = 50
    latent_epochs: int = 100
    push_interval: int = 10
    classifier_epochs: int = 10

    def __post_init__(self) -> None:
        for name, minimum in (
            ("warmup_epochs", 0),
            ("latent_epochs", 0),
            ("push_interval", 1),
            ("classifier_epochs", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")
        if self.warmup_epochs + self.latent_epochs == 0:
            raise ValueError("the schedule is empty: warmup_epochs and latent_epochs are both 0.")

    @property
    def num_blocks(self) -> int:
        """Number of latent blocks, i.e. of pushes."""
        return -(-self.latent_epochs // self.push_interval)

    @property
    def total_epochs(self) -> int:
        return self.warmup_epochs + self.latent_epochs + self.num_blocks * self.classifier_epochs

    def _locate(self, epoch: int) -> tuple[Stage, int]:
        """Stage of a 1-based global epoch and the index of its latent block (-1 in warm-up)."""
        if not 1 <= epoch <= self.total_epochs:
            raise ValueError(f"epoch must be within 1..{self.total_epochs}; got {epoch}.")
        e = epoch - self.warmup_epochs
        if e <= 0:
            return Stage.WARMUP, -1
        for block in range(self.num_blocks):
            length = min(self.push_interval, self.latent_epochs - block * self.push_interval)
            if e <= length:
                return Stage.LATENT, block
            e -= length
            if e <= self.classifier_epochs:
                return Stage.CLASSIFIER, block
            e -= self.classifier_epochs
        raise AssertionError("unreachable")  # pragma: no cover

    def stage(self, epoch: int) -> Stage:
        """Stage of a 1-based global epoch."""
        return self._locate(epoch)[0]

    def push_after(self, epoch: int) -> bool:
        """Whether a push follows ``epoch``: the last latent epoch of each block."""
        stage, block = self._locate(epoch)
        if stage != Stage.LATENT:
            return False
        return epoch == self.warmup_epochs + min((block + 1) * self.push_interval, self.latent_epochs) + (
            block * self.classifier_epochs
        )

    def latent_epoch_index(self, epoch: int) -> int:
        """0-based count of latent epochs before ``epoch`` (the stage-1 learning-rate scheduler's step)."""
        return sum(self.stage(e) == Stage.LATENT for e in range(1, epoch))
