"""Writes the predictions of an inference run to ``predictions.csv`` (no labels needed)."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import torch
from ignite.engine import Events

from ..io import write_text

__all__ = ["PredictionsWriter"]


class PredictionsWriter:
    """Collects ``subject_id`` (from the batch) and class probabilities (softmax of ``pred``) of every case and
    writes ``<output_dir>/predictions.csv`` at ``COMPLETED`` (atomically): subject, predicted class, one
    probability column per class.

    Args:
        output_dir: destination folder.
        class_names: names of the classes in index order.
    """

    def __init__(self, output_dir: str | os.PathLike, class_names: tuple[str, ...] = ("LGG", "HGG")) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = tuple(class_names)
        self.rows: list[list[str]] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine) -> None:
        output = engine.state.output
        logits = output["pred"] if isinstance(output, dict) else torch.stack([o["pred"] for o in output])
        probs = torch.softmax(torch.as_tensor(logits).detach().float().cpu(), dim=1)
        ids = engine.state.batch.get("subject_id", [str(len(self.rows) + i) for i in range(len(probs))])
        for sid, p in zip(ids, probs.tolist()):
            best = max(range(len(p)), key=p.__getitem__)
            self.rows.append([str(sid), self.class_names[best]] + [f"{v:.6f}" for v in p])

    def _write(self, engine) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["subject_id", "prediction"] + [f"prob_{c}" for c in self.class_names])
        writer.writerows(self.rows)
        write_text(self.output_dir / "predictions.csv", buffer.getvalue())
