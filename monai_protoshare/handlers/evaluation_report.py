"""Writes an evaluation's results: ``metrics.json``, ``predictions.csv`` and a reliability diagram."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events

from ..data.cases import CLASS_NAMES
from ..explain.attribution import CLASS_MAPS, PROTOPNET_MAPS
from ..io import atomic_path, write_json
from ..metrics import reliability_diagram
from .predictions_writer import write_predictions

__all__ = ["EvaluationReportHandler"]

logger = logging.getLogger(__name__)

#: per-case evidence checks of :class:`~monai_protoshare.engines.PrototypeEvaluator`, summarised by their mean
PER_CASE_KEYS = (
    "ap_per_scale",
    "ap_per_prototype",
    "ap_subregions",
    "ap_by_class_map",
    "ap_by_protopnet_map",
    "randomisation_spearman",
    "removal_error",
)
#: names of the columns of the per-case values written as ``{name: mean}``
NAMED_COLUMNS = {
    "ap_subregions": ("ncr_net", "ed", "et"),
    "ap_by_class_map": CLASS_MAPS,
    "ap_by_protopnet_map": PROTOPNET_MAPS,
}


class EvaluationReportHandler:
    """Collects every case of an evaluation run and writes, at ``COMPLETED`` (rank 0, atomically):

    - ``metrics.json``: ``bac``, ``ap`` (fractions), ``ids``, ``ids_bac`` (percent, the paper's deletion order),
      ``ids_peer``, ``ids_peer_bac`` (the peers' quantile order), ``ece``, ``n`` from ``engine.state.metrics``, the
      IDS curves, AP under each class-map convention (``ap_by_class_map``, ``class_map`` the one of ``ap``; ProtoPNet
      also ``ap_by_protopnet_map`` and ``protopnet_map``),
      and the means of the per-case evidence checks
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
        self, output_dir: str | os.PathLike, class_names: tuple[str, ...] = CLASS_NAMES, extra: dict | None = None
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
            for order in ("", "_peer"):
                result[f"ids{order}_bac"] = float(ids_details[f"ids{order}_bac"])
                result[f"ids{order}_curve"] = [float(v) for v in ids_details[f"curve{order}"]]
                result[f"ids{order}_bac_curve"] = [float(v) for v in ids_details[f"curve{order}_bac"]]
            result["ids_peer"] = float(ids_details["ids_peer"])
        for key in PER_CASE_KEYS:
            if self._cases[key]:
                mean = torch.cat(self._cases[key]).mean(dim=0)
                result[key] = mean.tolist() if mean.ndim else float(mean)
        if "ap_by_class_map" in result:  # the conventions ``ap`` was computed under (DESIGN §8)
            result["class_map"] = engine.class_map
        if "ap_by_protopnet_map" in result:
            result["protopnet_map"] = engine.protopnet_map
        for key, names in NAMED_COLUMNS.items():
            if isinstance(result.get(key), list):
                result[key] = dict(zip(names, result[key], strict=True))
        result["units"] = {
            "bac": "fraction",
            "ap": "fraction",
            "ids": "percent",
            "ids_bac": "percent",
            "ids_peer": "percent",
            "ids_peer_bac": "percent",
        }
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
        ids = self._cases["subject_id"] or [str(i) for i in range(len(labels))]
        write_predictions(self.output_dir, ids, probs.tolist(), self.class_names, labels.tolist(), ap)
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
