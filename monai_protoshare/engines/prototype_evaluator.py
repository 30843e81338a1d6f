"""Evaluation engine: predictions, attribution maps and per-case evidence metrics for every model (App. D, F.2)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.engines import Evaluator
from monai.engines.utils import default_prepare_batch
from monai.utils import look_up_option
from torch import nn

from ..explain.attribution import (
    CLASS_MAPS,
    DEFAULT_CLASS_MAP,
    DEFAULT_PROTOPNET_MAP,
    PROTOPNET_MAPS,
    class_attribution,
    prototype_class_maps,
    prototype_scale_maps,
)
from ..explain.evidence_checks import prototype_removal_error, randomised_copy, spearman_correlation
from ..metrics import compute_activation_precision
from ..networks import PrototypeNetwork

__all__ = ["SUBREGIONS", "PrototypeEvaluator"]

#: BraTS sub-regions besides the whole tumour: necrotic/non-enhancing core, oedema, enhancing tumour
SUBREGIONS = {"ncr_net": 1, "ed": 2, "et": 4}


class PrototypeEvaluator(Evaluator):
    """One evaluation pass over a held-out fold.

    Each iteration returns a batch dict (``decollate=False``) with

    - ``image`` (B, 4, H, W, D), ``label`` (B,), ``subject_id`` (B strings),
    - ``pred``: class probabilities (B, C) (softmax of the logits),
    - ``attribution``: M(x) for the ground-truth class (App. F.2) at input size (B, 1, H, W, D),
    - ``mask``: whole tumour (B, 1, H, W, D) when the loader provides one,
    - ``ap_by_class_map`` (B, 3): with a mask, on a prototype network, the AP of the class map under each
      convention of :data:`~monai_protoshare.explain.attribution.CLASS_MAPS` (the paper leaves the reading of
      eq. 28 open, DESIGN §8); for ProtoPNet also ``ap_by_protopnet_map`` (B, 2), one per
      :data:`~monai_protoshare.explain.attribution.PROTOPNET_MAPS`,

    and, with ``evidence_checks`` on a prototype network (beyond the paper):

    - ``ap_per_scale`` (B, S) and ``ap_per_prototype`` (B, K_total): AP of each scale's class map and of
      each prototype's own map;
    - ``ap_subregions`` (B, 3): AP of M(x) against NCR/NET, ED and ET (``seg`` needed);
    - ``randomisation_spearman`` (B,): rank correlation of M(x) with the map of a re-initialised copy
      of the network (faithful evidence changes: low values);
    - ``removal_error`` (B,): deviation of the logit change on removing a prototype from similarity ×
      weight (0 for the linear read-out).

    Metric handlers (BAC, AP, IDS, ECE; :mod:`monai_protoshare.handlers.metric_handlers`) and
    :class:`~monai_protoshare.handlers.EvaluationReportHandler` read these keys.

    Args:
        device: evaluation device; the network is moved to it.
        val_data_loader: batches with ``image``, ``label``, ``subject_id`` and optionally ``mask``, ``seg``.
        network: a :class:`PrototypeNetwork` or :class:`CNNClassifier`.
        attribution_method: for a CNN, ``"gradcam"``, ``"gradcampp"`` or ``"occlusion"`` (ignored for prototype
            networks).
        class_map: the convention of ``attribution`` (AP, IDS) for prototype networks: ``"density"`` (default),
            ``"eq28"`` or ``"eq12"`` (:func:`~monai_protoshare.explain.attribution.prototype_maps`).
        protopnet_map: ProtoPNet's per-prototype map, ``"topk"`` (default) or ``"similarity"``.
        evidence_checks: compute the beyond-paper per-case values above.
        randomisation_seed: seed of the re-initialised copy.
        val_handlers: handlers (metric handlers, report writer, stats).
        key_val_metric, additional_metrics: Ignite metrics.
        amp: bf16 autocast on CUDA.
        channels_last: run the network on ``torch.channels_last_3d`` tensors (faster 3D convolutions).
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader,
        network: nn.Module,
        attribution_method: str | None = None,
        class_map: str = DEFAULT_CLASS_MAP,
        protopnet_map: str = DEFAULT_PROTOPNET_MAP,
        evidence_checks: bool = True,
        randomisation_seed: int = 0,
        val_handlers: Sequence | None = None,
        key_val_metric: dict | None = None,
        additional_metrics: dict | None = None,
        amp: bool = False,
        channels_last: bool = True,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
    ) -> None:
        super().__init__(
            device=device,
            val_data_loader=val_data_loader,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            key_val_metric=key_val_metric,
            additional_metrics=additional_metrics,
            val_handlers=val_handlers,
            amp=bool(amp) and torch.device(device).type == "cuda",
            decollate=False,
        )
        self.network = network
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        network.to(device=self.state.device, memory_format=self.memory_format)
        self.attribution_method = attribution_method
        self.class_map = look_up_option(class_map, CLASS_MAPS)
        self.protopnet_map = look_up_option(protopnet_map, PROTOPNET_MAPS)
        self.evidence_checks = bool(evidence_checks) and isinstance(network, PrototypeNetwork)
        self.randomised_network = randomised_copy(network, randomisation_seed) if self.evidence_checks else None

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) of the network in eval mode, no gradient (IDS deletion steps call this)."""
        self.network.eval()
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=self.amp):
            return self.network(images).float()

    def _iteration(self, engine: PrototypeEvaluator, batchdata: dict[str, Any]) -> dict[str, Any]:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        images = batchdata["image"].to(engine.state.device, non_blocking=engine.non_blocking)
        images = images.contiguous(memory_format=self.memory_format)
        labels = torch.as_tensor(batchdata["label"]).long().view(-1).to(images.device)
        out: dict[str, Any] = {"image": images, "label": labels, "subject_id": list(batchdata.get("subject_id", []))}
        mask = batchdata.get("mask")
        if mask is not None:
            mask = mask.to(images.device)
            if mask.shape[2:] != images.shape[2:]:
                raise ValueError(
                    f"mask shape {tuple(mask.shape[2:])} differs from image shape {tuple(images.shape[2:])} "
                    f"for subjects {out['subject_id']}."
                )
            out["mask"] = mask
        self.network.eval()
        if isinstance(self.network, PrototypeNetwork):
            with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=self.amp):
                explained = self.network.explain(images, online_cam=False)
            logits = explained.logits.float()
            out["attribution"] = self._class_map(explained, labels, size=images.shape[2:]).float()
            if mask is not None:
                out.update(self._ap_by_convention(explained, labels, mask))
            if self.evidence_checks:
                out.update(self._evidence_checks(explained, images, labels, mask, batchdata.get("seg"), out))
        else:
            logits = self.predict(images)
            out["attribution"] = class_attribution(self.network, images, labels, self.attribution_method).float()
        out["pred"] = torch.softmax(logits, dim=1)
        return out

    def _class_map(self, explained, labels, size, class_map=None, protopnet_map=None, network=None) -> torch.Tensor:
        """M(x) (B, 1, *size) under this evaluator's conventions unless others are given."""
        return prototype_class_maps(
            network or self.network,
            explained,
            labels,
            size,
            class_map or self.class_map,
            protopnet_map or self.protopnet_map,
        )

    @torch.no_grad()
    def _ap_by_convention(self, explained, labels, mask) -> dict[str, torch.Tensor]:
        """AP (B, n) of the class map under each class-map convention (and each ProtoPNet map, for ProtoPNet)."""
        size = mask.shape[2:]

        def ap(**convention) -> torch.Tensor:
            return compute_activation_precision(self._class_map(explained, labels, size, **convention).float(), mask)

        out = {"ap_by_class_map": torch.stack([ap(class_map=c) for c in CLASS_MAPS], dim=1)}
        if self.network.mapping == "none":
            out["ap_by_protopnet_map"] = torch.stack([ap(protopnet_map=m) for m in PROTOPNET_MAPS], dim=1)
        return out

    @torch.no_grad()
    def _evidence_checks(self, explained, images, labels, mask, seg, out) -> dict[str, torch.Tensor]:
        size = images.shape[2:]
        checks: dict[str, torch.Tensor] = {}
        if mask is not None:
            scale_maps = prototype_scale_maps(self.network, explained, labels, self.class_map, self.protopnet_map)
            checks["ap_per_scale"] = torch.stack([compute_activation_precision(m, mask) for m in scale_maps], dim=1)
            per_prototype = [
                compute_activation_precision(a[:, k : k + 1].float(), mask)
                for a in explained.attention
                for k in range(a.shape[1])
            ]
            checks["ap_per_prototype"] = torch.stack(per_prototype, dim=1)
        if seg is not None:
            seg = seg.to(images.device)
            checks["ap_subregions"] = torch.stack(
                [compute_activation_precision(out["attribution"], (seg == v).float()) for v in SUBREGIONS.values()],
                dim=1,
            )
        random_output = self.randomised_network.explain(images, online_cam=False)
        random_maps = self._class_map(random_output, labels, size, network=self.randomised_network)
        checks["randomisation_spearman"] = spearman_correlation(out["attribution"], random_maps)
        checks["removal_error"] = prototype_removal_error(self.network.classifier, explained.similarities.float())
        return checks
