"""Ignite handler writing each evaluated case's prototype evidence in its native space (DESIGN §10)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor, decollate_batch
from monai.transforms import Compose

from ..data.cases import CLASS_NAMES
from ..explain.dicom_seg import SegWriterFactory
from ..explain.evidence import PrototypeSource, explain_cases, prototype_catalogue
from ..explain.evidence_maths import OVERLAY_THRESHOLD
from ..explain.evidence_writer import is_exported, native_images, reference_image, source_reference, write_case_evidence
from ..networks import PrototypeNetwork

__all__ = ["EvidenceExportHandler"]

logger = logging.getLogger(__name__)


class EvidenceExportHandler:
    """At every ``ITERATION_COMPLETED``, write the evidence of each case of ``engine.state.batch``.

    For each case: :func:`~monai_protoshare.explain.evidence.explain_cases` on its preprocessed ``image``
    (a MetaTensor carrying its ``applied_operations``, as a MONAI evaluator's batch does, collated or
    decollated), then :func:`~monai_protoshare.explain.evidence_writer.write_case_evidence` to
    ``<output_dir>/<subject_id>/`` in the shape and affine of the case's input file. A case that fails is
    logged and listed in :attr:`failures`, and the evaluation goes on; finished cases are skipped unless
    ``overwrite``. When the batch holds a ``mask`` (whole tumour, e.g. from ``eval_transforms``), the report
    gets the fraction of evidence mass inside it, in native space.

    Args:
        network: the :class:`~monai_protoshare.networks.PrototypeNetwork` being evaluated.
        transform: the very preprocessing ``Compose`` of the evaluator's dataset (it is inverted).
        output_dir: parent of the case folders (a bundle uses ``<fold_dir>/evidence``).
        top_k: number of top contributing prototypes whose maps are written.
        sharedness: (K,) population sharedness (App. G) computed once beforehand, or ``None``.
        sources: prototype sources for the figures, or ``None``.
        class_names: names of the classes, label order.
        figure: also write the case figure.
        overlay_threshold: relative level of the label overlay.
        overwrite: rewrite finished cases.
        dicom_seg: called with an input file of each case, returns the writer of its DICOM SEG or ``None``
            (``data_prep.evidence_seg.case_seg_writer`` writes one for the cases ``data_prep`` prepared from DICOM);
            ``None``: no SEG.
        image_key, id_key, label_key, mask_key: keys of the batch.

    Example:
        >>> handler = EvidenceExportHandler(network, preprocessing, "out/evidence", top_k=3)
        >>> handler.attach(evaluator)
        >>> evaluator.run()
        >>> handler.failures  # subject id -> error message
        {}
    """

    def __init__(
        self,
        network: PrototypeNetwork,
        transform: Compose,
        output_dir: str | os.PathLike,
        top_k: int = 5,
        sharedness: torch.Tensor | None = None,
        sources: Mapping[int, PrototypeSource] | None = None,
        class_names: Sequence[str] = CLASS_NAMES,
        figure: bool = True,
        overlay_threshold: float = OVERLAY_THRESHOLD,
        overwrite: bool = False,
        dicom_seg: SegWriterFactory | None = None,
        image_key: str = "image",
        id_key: str = "subject_id",
        label_key: str = "label",
        mask_key: str = "mask",
    ) -> None:
        if not isinstance(network, PrototypeNetwork):
            raise ValueError(f"network must be a PrototypeNetwork; received {type(network).__name__}.")
        if not isinstance(transform, Compose):
            raise ValueError(
                f"transform must be the preprocessing Compose that produced the images; received {type(transform).__name__}."
            )
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1; received {top_k}.")
        self.network, self.transform = network, transform
        self.output_dir = Path(output_dir)
        self.top_k, self.sharedness, self.sources = int(top_k), sharedness, sources
        self.class_names, self.figure = tuple(class_names), bool(figure)
        self.overlay_threshold = float(overlay_threshold)
        self.overwrite, self.dicom_seg = bool(overwrite), dicom_seg
        self.image_key, self.id_key, self.label_key, self.mask_key = image_key, id_key, label_key, mask_key
        self.written: list[str] = []
        self.failures: dict[str, str] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        batch = engine.state.batch
        items = list(batch) if isinstance(batch, (list, tuple)) else decollate_batch(batch, detach=True)
        todo = []
        for position, item in enumerate(items):
            subject = str(item.get(self.id_key, f"iteration{engine.state.iteration}_case{position}"))
            try:
                if not self.overwrite and is_exported(self.output_dir, subject):
                    continue
            except ValueError as err:  # an id that cannot name a case folder: reported, the evaluation goes on
                self._fail(subject, f"{type(err).__name__}: {err}")
                continue
            if not isinstance(item.get(self.image_key), MetaTensor) or not item[self.image_key].applied_operations:
                self._fail(
                    subject, f"'{self.image_key}' must be the preprocessed MetaTensor with its applied operations"
                )
                continue
            todo.append((subject, item))
        if not todo:
            return
        catalogue = prototype_catalogue(self.network, self.sharedness, self.class_names)
        labels = [_label(item.get(self.label_key)) for _, item in todo]
        try:
            images = torch.stack([item[self.image_key].as_tensor() for _, item in todo])
            evidences = explain_cases(
                self.network, images, [s for s, _ in todo], None, self.top_k, self.sharedness, labels
            )
        except Exception as err:  # one bad batch is reported for its cases; the evaluation continues
            for subject, _ in todo:
                self._fail(subject, f"{type(err).__name__}: {err}")
            return
        for evidence, (subject, item) in zip(evidences, todo, strict=True):
            try:
                image = item[self.image_key]
                source = source_reference(image)
                reference = reference_image(source)
                mask = None
                if self.mask_key in item:
                    volume = torch.as_tensor(item[self.mask_key]).reshape(1, *image.shape[1:])
                    mask = native_images(volume, image, self.transform, reference, "nearest", subject)[0] > 0.5
                write_case_evidence(
                    evidence,
                    catalogue,
                    image,
                    self.transform,
                    self.output_dir,
                    reference,
                    sources=self.sources,
                    figure=self.figure,
                    overlay_threshold=self.overlay_threshold,
                    tumour_mask=mask,
                    dicom_seg=self.dicom_seg(source) if self.dicom_seg is not None else None,
                    overwrite=self.overwrite,
                )
                self.written.append(subject)
            except Exception as err:  # a bad case is reported, never stops the evaluation
                self._fail(subject, f"{type(err).__name__}: {err}")

    def _fail(self, subject: str, message: str) -> None:
        logger.error("evidence export of %s failed: %s", subject, message)
        self.failures[subject] = message


def _label(value: Any) -> int | None:
    if value is None:
        return None
    return int(torch.as_tensor(value).reshape(-1)[0])
