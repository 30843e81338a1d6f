"""Atomic, resumable training checkpoints: a run killed at any point continues from its last epoch."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Events

from ..io import atomic_path, remove_stale_temporaries

__all__ = ["RNGState", "TrainingCheckpointHandler"]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"


class RNGState:
    """torch, numpy and ``random`` generator states as a state dict that loads with ``weights_only=True``."""

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "gauss": [has_gauss, cached]},
            "python": list(random.getstate()[1]),
            "python_version": random.getstate()[0],
            "python_gauss": random.getstate()[2],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        np_state = state["numpy"]
        np.random.set_state(
            ("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"], *np_state["gauss"])
        )
        random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))


class TrainingCheckpointHandler:
    """Save everything a run needs at every ``EPOCH_COMPLETED`` and resume from it at ``STARTED``.

    ``<save_dir>/checkpoint.pt`` holds the state dicts of ``objects`` (network, optimisers, schedulers,
    warm-up head, the trainer's epoch/iteration) and RNG states; it is written to a temporary file and
    renamed, so a kill during the write leaves the previous checkpoint intact (the next run deletes the
    temporary file at ``STARTED``). At ``COMPLETED``
    ``<save_dir>/model.pt`` receives the network's state dict alone (the fold's model file), and so does
    ``model_path`` when given (a bundle's ``models/model.pt``, which inference loads with MONAI's
    ``CheckpointLoader``), written atomically too. Files are loaded with ``torch.load(weights_only=True)``: a
    checkpoint cannot execute code.

    Args:
        save_dir: checkpoint folder (fold-indexed by the bundle).
        objects: name -> object with ``state_dict``/``load_state_dict``; must contain ``"network"`` and
            ``"trainer"``. Default: the engine's ``checkpoint_objects()`` (a
            :class:`~monai_protoshare.engines.PrototypeTrainer`), read at ``attach``.
        resume: load ``checkpoint.pt`` when it exists.
        rank: only rank 0 writes.
        model_path: a second file for the final weights (``None``: none), e.g. ``<bundle_root>/models/model.pt``.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        objects: dict[str, Any] | None = None,
        resume: bool = True,
        rank: int = 0,
        model_path: str | os.PathLike | None = None,
    ) -> None:
        self.save_dir = Path(save_dir)
        self.model_path = None if model_path is None else Path(model_path)
        self.objects = None if objects is None else self._with_rng(objects)
        self.resume = resume
        self.rank = rank

    @staticmethod
    def _with_rng(objects: dict[str, Any]) -> dict[str, Any]:
        for key in ("network", "trainer"):
            if key not in objects:
                raise KeyError(f"checkpoint objects must include '{key}'; got {sorted(objects)}.")
        return {**objects, "rng": RNGState()}

    @property
    def checkpoint_path(self) -> Path:
        return self.save_dir / CHECKPOINT_NAME

    def attach(self, engine) -> None:
        if self.objects is None:
            self.objects = self._with_rng(engine.checkpoint_objects())
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)
        engine.add_event_handler(Events.COMPLETED, self.save_model)

    def load(self, engine) -> None:
        if self.rank == 0:  # what a killed write left behind (the files under their final names are intact)
            for name in (CHECKPOINT_NAME, MODEL_NAME):
                for stale in remove_stale_temporaries(self.save_dir / name):
                    logger.info("removed %s, left by a run killed while writing %s", stale.name, name)
        if not (self.resume and self.checkpoint_path.is_file()):
            return
        try:
            state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise RuntimeError(
                f"cannot resume from '{self.checkpoint_path}': {err}. Delete it to start the run afresh."
            ) from None
        missing = sorted(set(self.objects) - set(state))
        if missing:
            raise KeyError(f"checkpoint '{self.checkpoint_path}' lacks {missing}; it was written by another run type.")
        for name, obj in self.objects.items():
            try:
                obj.load_state_dict(state[name])
            except (RuntimeError, ValueError, KeyError) as err:
                raise RuntimeError(
                    f"checkpoint '{self.checkpoint_path}' does not fit this run's '{name}' "
                    f"(another model or configuration?): {str(err).splitlines()[0]}"
                ) from None
        logger.info("resumed from %s at epoch %d", self.checkpoint_path, engine.state.epoch)

    def save(self, engine) -> None:
        if self.rank != 0:
            return
        state = {name: obj.state_dict() for name, obj in self.objects.items()}
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(state, tmp)

    def save_model(self, engine) -> None:
        if self.rank != 0:
            return
        state = self.objects["network"].state_dict()
        for path in [self.save_dir / MODEL_NAME] + ([] if self.model_path is None else [self.model_path]):
            with atomic_path(path) as tmp:
                torch.save(state, tmp)
        if self.model_path is not None:
            logger.info("final weights written to %s", self.model_path)
