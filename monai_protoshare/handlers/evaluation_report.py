"""Writes an evaluation's results: ``metrics.json``, ``predictions.csv`` and a reliability diagram."""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events

from ..io import atomic_path, write_json, write_text
from ..metrics import reliability_diagram

__all__ = ["EvaluationReportHandler"]

logger = logging.getLogger(__name__)

#: per-case evidence checks of :class:`~monai_protoshare.engines.PrototypeEvaluator`, summarised by their mean
PER_CASE_KEYS = ("ap_per_scale", "ap_per_prototype", "ap_subregions", "randomisation_spearman", "removal_error")


class EvaluationReportHandler:
    """Collects every case of an evaluation run and writes, at ``COMPLETED`` (rank 0, atomically):

    - ``metrics.json``: ``bac``, ``ap`` (fractions), ``ids``, ``ids_bac`` (percent), ``ece``, ``n`` from
      ``engine.state.metrics``, the IDS curves, and the means of the per-case evidence checks
      (AP per scale, per prototype and per BraTS sub-region; randomisation rank correlation; prototype
      removal error), plus ``extra`` (e.g. model name, fold, attribution method);
    - ``predictions.csv``: subject, true class, predicted class, class probabilities, case AP;
    - ``reliability.png``: the reliability diagram of the predicted probabilities.

    Args:
        output_dir: the fold's output folder.
        class_names: names of the classes in index order.
        extra: values copied into ``metrics.json``.
    """

    def __init__(
        self, output_dir: str | os.PathLike, class_names: tuple[str, ...] = ("LGG", "HGG"), extra: dict | None = None
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = tuple(class_names)
        self.extra = dict(extra or {})
        self._cases: dict[str, list] = {}

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine) -> None:
        self._cases = {"subject_id": [], "label": [], "pred": []}
        self._cases.update({k: [] for k in PER_CASE_KEYS})

    def _collect(self, engine) -> None:
        out = engine.state.output
        self._cases["subject_id"] += [str(s) for s in out.get("subject_id", [])]
        self._cases["label"].append(out["label"].detach().cpu())
        self._cases["pred"].append(out["pred"].detach().float().cpu())
        for key in PER_CASE_KEYS:
            if key in out:
                self._cases[key].append(out[key].detach().double().cpu())

    def summary(self, engine) -> dict[str, Any]:
        """The content of ``metrics.json``."""
        metrics, details = engine.state.metrics, engine.state.metric_details
        labels = torch.cat(self._cases["label"])
        result: dict[str, Any] = {"n": int(labels.numel())}
        for key in ("bac", "ap", "ids", "ece"):
            if key in metrics:
                result[key] = float(metrics[key])
        ids_details = details.get("ids")
        if isinstance(ids_details, dict):
            result["ids_bac"] = float(ids_details["ids_bac"])
            result["ids_curve"] = [float(v) for v in ids_details["curve"]]
            result["ids_bac_curve"] = [float(v) for v in ids_details["curve_bac"]]
        for key in PER_CASE_KEYS:
            if self._cases[key]:
                mean = torch.cat(self._cases[key]).mean(dim=0)
                result[key] = mean.tolist() if mean.ndim else float(mean)
        if isinstance(result.get("ap_subregions"), list):
            result["ap_subregions"] = dict(zip(("ncr_net", "ed", "et"), result["ap_subregions"]))
        result["units"] = {"bac": "fraction", "ap": "fraction", "ids": "percent", "ids_bac": "percent"}
        result.update(self.extra)
        return result

    def _write(self, engine) -> None:
        if getattr(engine.state, "rank", 0) != 0:
            return
        summary = self.summary(engine)
        write_json(self.output_dir / "metrics.json", summary)
        probs = torch.cat(self._cases["pred"])
        labels = torch.cat(self._cases["label"])
        ap = engine.state.metric_details.get("ap")
        ap = torch.as_tensor(ap).flatten().tolist() if ap is not None else [None] * len(labels)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["subject_id", "label", "prediction"] + [f"prob_{c}" for c in self.class_names] + ["ap"])
        ids = self._cases["subject_id"] or [str(i) for i in range(len(labels))]
        for sid, y, p, a in zip(ids, labels.tolist(), probs.tolist(), ap):
            predicted = self.class_names[max(range(len(p)), key=p.__getitem__)]
            row = [sid, self.class_names[y], predicted] + [f"{v:.6f}" for v in p]
            writer.writerow(row + ["" if a is None else f"{float(a):.6f}"])
        write_text(self.output_dir / "predictions.csv", buffer.getvalue())
        figure = reliability_diagram(probs, labels)
        with atomic_path(self.output_dir / "reliability.png") as tmp:
            figure.savefig(tmp, dpi=100)
        logger.info(
            "evaluation of %d cases: BAC %.4f, AP %.4f, IDS %.2f%%  -> %s",
            summary["n"],
            summary.get("bac", float("nan")),
            summary.get("ap", float("nan")),
            summary.get("ids", float("nan")),
            self.output_dir,
        )
