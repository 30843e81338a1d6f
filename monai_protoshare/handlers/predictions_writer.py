"""``predictions.csv``, the one writer of it (inference and evaluation), and the inference handler writing it."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from ignite.engine import Events

from ..data.cases import CLASS_NAMES
from ..io import write_text

__all__ = ["PREDICTIONS_NAME", "PredictionsWriter", "write_predictions"]

PREDICTIONS_NAME = "predictions.csv"


def write_predictions(
    output_dir: str | os.PathLike,
    subject_ids: Sequence[str],
    probabilities: Sequence[Sequence[float]],
    class_names: Sequence[str] = CLASS_NAMES,
    labels: Sequence[int] | None = None,
    case_ap: Sequence[float | None] | None = None,
) -> Path:
    """Write ``<output_dir>/predictions.csv`` atomically, one row a case.

    Columns: ``subject_id``, ``label`` (class name; with ``labels``), ``prediction`` (the class of the highest
    probability, the first on ties), ``prob_<class>`` per class (6 decimals), ``ap`` (with ``case_ap``; empty
    where ``None``).

    Args:
        output_dir: destination folder.
        subject_ids: (N,) case ids.
        probabilities: (N, C) class probabilities, class order of ``class_names``.
        class_names: (C,) names of the classes in label order.
        labels: (N,) true class labels, or ``None`` (inference).
        case_ap: (N,) activation precision of each case, or ``None``.

    Returns:
        The path written.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        ["subject_id", *(["label"] if labels is not None else []), "prediction"]
        + [f"prob_{c}" for c in class_names]
        + (["ap"] if case_ap is not None else [])
    )
    for i, (sid, p) in enumerate(zip(subject_ids, probabilities, strict=True)):
        row = [str(sid), *([class_names[int(labels[i])]] if labels is not None else [])]
        row += [class_names[max(range(len(p)), key=p.__getitem__)]] + [f"{float(v):.6f}" for v in p]
        if case_ap is not None:
            row.append("" if case_ap[i] is None else f"{float(case_ap[i]):.6f}")
        writer.writerow(row)
    return write_text(Path(output_dir) / PREDICTIONS_NAME, buffer.getvalue())


class PredictionsWriter:
    """Collects ``subject_id`` (from the batch) and class probabilities (softmax of ``pred``) of every case and
    writes ``<output_dir>/predictions.csv`` at ``COMPLETED`` (:func:`write_predictions`, no labels needed).

    Args:
        output_dir: destination folder.
        class_names: names of the classes in index order.
        softmax: ``pred`` holds logits (B, C); ``False`` when the evaluator's ``postprocessing`` already made them
            probabilities (the bundles' inference).
    """

    def __init__(
        self, output_dir: str | os.PathLike, class_names: Sequence[str] = CLASS_NAMES, softmax: bool = True
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = tuple(class_names)
        self.softmax = bool(softmax)
        self.subject_ids: list[str] = []
        self.probabilities: list[list[float]] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine) -> None:
        self.subject_ids.clear()
        self.probabilities.clear()

    def _collect(self, engine) -> None:
        output = engine.state.output
        pred = output["pred"] if isinstance(output, dict) else torch.stack([o["pred"] for o in output])
        probs = torch.as_tensor(pred).detach().float().cpu()
        probs = torch.softmax(probs, dim=1) if self.softmax else probs
        count = len(self.subject_ids)
        ids = engine.state.batch.get("subject_id", [str(count + i) for i in range(len(probs))])
        for sid, p in zip(ids, probs.tolist()):
            self.subject_ids.append(str(sid))
            self.probabilities.append(p)

    def _write(self, engine) -> None:
        write_predictions(self.output_dir, self.subject_ids, self.probabilities, self.class_names)
