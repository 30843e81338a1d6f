"""Inference export of the segmentation bundles (issue 23): the segmentation and the prototype evidence, native space.

Per case, under ``<output_dir>/<subject_id>/`` (the grid and affine of the input sequences, preprocessing inverted):

- ``segmentation.nii.gz``: uint8 BraTS labels rebuilt from the thresholded regions (:func:`regions_to_brats_labels`);
- ``probabilities.nii.gz``: float32 (X, Y, Z, 3), σ(logit) of [TC, WT, ET];
- for ProtoSeg, ``prototype_<k>.nii.gz``: the similarity map up(S_k) of the ``top_k`` prototypes with the largest
  total contribution to the whole tumour, and ``report.json``: for each region, every prototype's total contribution
  Σ_{v ∈ predicted region} w_{r,k} up(S_k)(v) and its share, plus the prototype's source voxel (``prototypes.json``
  of the push) when given;
- ``xai_<name>.nii.gz``: the map of each configured explainer (Seg-Grad-CAM, occlusion, Seg-Ablation-CAM of
  :mod:`~monai_protoshare.explain.segmentation_xai`, any network) for region ``explain_region``;
- ``segmentation_seg.dcm``: for a case ``data_prep`` made from a DICOM study, the segmentation as a DICOM SEG on its
  original T1-CE series, through the ``dicom_seg`` factory of the grading evidence
  (:data:`~monai_protoshare.explain.dicom_seg.SegWriterFactory`, ``data_prep.evidence_seg.case_seg_writer``; the
  library never imports ``data_prep``), with one segment per BraTS region (whole tumour, tumour core, enhancing
  tumour: :data:`~monai_protoshare.explain.dicom_seg.BRATS_REGION_SEGMENTS`, overlapping as the regions nest).

:class:`SegmentationExportHandler` does this at every iteration of a ``SupervisedEvaluator`` with batches of one case;
a case that fails is logged and skipped, so one bad case never stops a batch.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.transforms import Compose

from ..data.transforms import to_native_space
from ..explain.dicom_seg import BRATS_REGION_SEGMENTS, SegWriterFactory
from ..explain.evidence_writer import reference_image, source_reference, write_nifti
from ..io import write_json
from ..networks.modes import evaluating
from ..networks.proto_seg import BRATS_REGIONS, ProtoSegNetwork

__all__ = [
    "SEGMENTATION_SEG_NAME",
    "SegmentationExportHandler",
    "prototype_region_contributions",
    "regions_to_brats_labels",
]

logger = logging.getLogger(__name__)

SEGMENTATION_SEG_NAME = "segmentation_seg.dcm"


def regions_to_brats_labels(masks: torch.Tensor) -> torch.Tensor:
    """[TC, WT, ET] masks (3, H, W, D) -> BraTS labels (H, W, D) uint8: 2 in WT, 1 in TC, 4 in ET (inside out wins)."""
    labels = torch.zeros(masks.shape[1:], dtype=torch.uint8, device=masks.device)
    labels[masks[1] > 0] = 2
    labels[masks[0] > 0] = 1
    labels[masks[2] > 0] = 4
    return labels


def prototype_region_contributions(network: ProtoSegNetwork, similarities: torch.Tensor, masks: torch.Tensor):
    """Total contribution of each prototype to each region over that region's predicted voxels.

    Args:
        similarities: up(S) (K, H, W, D) on the input grid. masks: predicted regions (R, H, W, D).

    Returns:
        (R, K): w_{r,k} Σ_{v ∈ mask_r} up(S_k)(v).
    """
    inside = torch.einsum("khwd,rhwd->rk", similarities, masks.to(similarities.dtype))
    return network.region_weights.detach().to(inside.device) * inside


class SegmentationExportHandler:
    """Write each case's segmentation (and, for ProtoSeg, its prototype evidence) in native space.

    Args:
        transform: the very preprocessing ``Compose`` that produced the batches (it is inverted).
        output_dir: export folder.
        network: the network the evaluator runs (for ProtoSeg's evidence).
        threshold: probability above which a voxel is in a region.
        top_k: prototype maps written per case (ProtoSeg).
        prototypes_json: the push's ``prototypes.json`` (optional; adds each prototype's source to the report).
        explainers: name -> ``(network, image (1, 4, H, W, D), region=r) -> map (1, 1, H, W, D)`` (optional).
        explain_region: the region the explainers explain (1 = WT).
        dicom_seg: called with the case's input file, returns the writer of its DICOM SEG or ``None`` (a case not
            made from DICOM); ``None``: no SEG.
    """

    def __init__(
        self,
        transform: Compose,
        output_dir: str | os.PathLike,
        network: torch.nn.Module,
        threshold: float = 0.5,
        top_k: int = 3,
        prototypes_json: str | os.PathLike | None = None,
        explainers: dict[str, Callable] | None = None,
        explain_region: int = 1,
        dicom_seg: SegWriterFactory | None = None,
    ) -> None:
        self.transform, self.output_dir, self.network = transform, Path(output_dir), network
        self.dicom_seg = dicom_seg
        self.threshold, self.top_k = threshold, top_k
        self.explainers, self.explain_region = explainers or {}, explain_region
        path = Path(prototypes_json) if prototypes_json else None
        self.provenance = json.loads(path.read_text())["prototypes"] if path and path.is_file() else None

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        batch = engine.state.batch
        for i, image in enumerate(batch["image"]):
            subject = str(batch["subject_id"][i]) if "subject_id" in batch else f"case{engine.state.iteration}_{i}"
            try:
                self.export(image, subject)
            except Exception:  # a bad case is reported and skipped, never stops the batch
                logger.exception("%s: segmentation export failed", subject)

    @torch.no_grad()
    def export(self, image: torch.Tensor, subject: str) -> Path:
        """Run the network on one preprocessed image (4, H, W, D) and write its files; returns the case folder.

        The network runs in eval mode (BN running statistics; the evaluator has restored its own mode by the time
        its ``ITERATION_COMPLETED`` handlers run), and every submodule's mode is restored afterwards.
        """
        with evaluating(self.network):
            return self._export(image, subject)

    def _export(self, image: torch.Tensor, subject: str) -> Path:
        device = next(self.network.parameters()).device
        x = image[None].to(device).as_tensor() if hasattr(image, "as_tensor") else image[None].to(device)
        is_proto = isinstance(self.network, ProtoSegNetwork)
        output = self.network.forward_features(x) if is_proto else None
        logits = output.logits if is_proto else self.network(x)
        probabilities = torch.sigmoid(logits[0]).cpu()
        masks = probabilities > self.threshold
        source = source_reference(image)
        reference = reference_image(source)
        case_dir = self.output_dir / subject
        labels = to_native_space(regions_to_brats_labels(masks)[None].float(), image, self.transform, mode="nearest")
        segmentation = write_nifti(
            case_dir / "segmentation.nii.gz", labels[0].numpy().round().astype(np.uint8), reference
        )
        writer = self.dicom_seg(source) if self.dicom_seg is not None else None
        if writer is not None:
            written = writer(nib.load(segmentation), case_dir, segments=BRATS_REGION_SEGMENTS)
            os.replace(written, case_dir / SEGMENTATION_SEG_NAME)
        native_probabilities = to_native_space(probabilities, image, self.transform).numpy()
        write_nifti(case_dir / "probabilities.nii.gz", np.moveaxis(native_probabilities, 0, -1), reference)
        if is_proto:
            self._write_evidence(case_dir, output.similarities, masks, image, reference, x.shape[2:])
        for name, explain in self.explainers.items():
            with torch.enable_grad():
                attribution = explain(self.network, x, region=self.explain_region).detach()[0].cpu()
            native = to_native_space(attribution, image, self.transform)[0].numpy().astype(np.float32)
            write_nifti(case_dir / f"xai_{name}.nii.gz", native, reference)
        return case_dir

    def _write_evidence(self, case_dir, similarities, masks, image, reference, size) -> None:
        up = F.interpolate(similarities, size=tuple(size), mode="trilinear")[0].cpu()  # (K, H, W, D)
        contributions = prototype_region_contributions(self.network, up, masks)
        wt = BRATS_REGIONS.index("WT")
        top = contributions[wt].argsort(descending=True)[: self.top_k].tolist()
        for k in top:
            native = to_native_space(up[k : k + 1], image, self.transform)[0].numpy().astype(np.float32)
            write_nifti(case_dir / f"prototype_{k}.nii.gz", native, reference)
        report: dict[str, Any] = {"regions": {}, "top_prototypes_wt": top, "voxels": {}}
        for r, region in enumerate(BRATS_REGIONS):
            total = float(contributions[r].sum())
            report["voxels"][region] = int(masks[r].sum())
            report["regions"][region] = [
                {
                    "prototype": k,
                    "contribution": float(contributions[r, k]),
                    "share": float(contributions[r, k]) / total if total > 0 else 0.0,
                    **({"source": self.provenance[k]} if self.provenance else {}),
                }
                for k in contributions[r].argsort(descending=True).tolist()
            ]
        write_json(case_dir / "report.json", report)
