"""Write one case's prototype evidence in the patient's native space (DESIGN §10): NIfTI, report.json, PNG.

Layout of ``<output_dir>/<subject_id>/`` (published all at once, see :func:`staged_case_dir`):

* ``class_evidence.nii.gz``: float32 class evidence map (eq. 28) of the explained class;
* ``prototype_<rank>_s<scale>_k<index>.nii.gz``: float32 maps of the top-k contributing prototypes
  (density-rescaled: 1 = uniform attention);
* ``evidence_label.nii.gz``: uint8 label overlay, 1 where the class evidence, min-max normalised over the
  network grid, is ≥ ``overlay_threshold`` (0.5: the rule of the activation-precision metric, DESIGN §8);
* ``case_figure.png``: the Fig.-5-style figure (:func:`~monai_protoshare.explain.figures.case_figure`);
* ``report.json``: prediction, probabilities, every prototype's scale, index, similarity, class weights,
  contribution to each class logit (eq. 31), sharedness (App. G), per-sequence similarity drop, push source;
  written last, so its presence marks a finished case.

Every volume is the network-grid map taken back through the inverse of the preprocessing
(:func:`~monai_protoshare.data.transforms.to_native_space`) onto the input's voxel grid, and carries the
input file's qform and sform (codes included), so 3D Slicer or ITK-SNAP overlays it on the T1-CE with no
registration. A map whose inverted affine differs from the reference file's raises instead of being written
at a wrong position.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from ..data.cases import SEQUENCE_NAMES
from ..data.transforms import to_native_space
from ..io import atomic_path, write_json
from .evidence import CaseEvidence, PrototypeCatalogue, PrototypeSource
from .evidence_maths import OVERLAY_THRESHOLD, evidence_mass_in_mask, overlay_cutoff
from .figures import case_figure, save_figure

__all__ = [
    "CLASS_MAP_NAME",
    "FIGURE_NAME",
    "LABEL_NAME",
    "REPORT_FORMAT",
    "REPORT_NAME",
    "case_report",
    "is_exported",
    "native_images",
    "reference_image",
    "source_reference",
    "staged_case_dir",
    "write_case_evidence",
    "write_nifti",
]

logger = logging.getLogger(__name__)

REPORT_FORMAT = "monai_protoshare.evidence/1"
REPORT_NAME = "report.json"
CLASS_MAP_NAME = "class_evidence.nii.gz"
LABEL_NAME = "evidence_label.nii.gz"
FIGURE_NAME = "case_figure.png"
# A 1 µm disagreement between the inverted affine and the file's is rounding; anything larger is a wrong map.
_AFFINE_TOLERANCE_MM = 1e-3
_PARTIAL = ".partial-"
_SUBJECT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _case_dir(output_dir: str | os.PathLike, subject_id: str) -> Path:
    """``<output_dir>/<subject_id>``, for a subject id that is a plain folder name."""
    if not isinstance(subject_id, str) or not _SUBJECT_PATTERN.fullmatch(subject_id):
        raise ValueError(
            "subject_id must be letters, digits, '.', '_' or '-' starting with a letter or digit (it names the "
            f"case folder); received {subject_id!r}."
        )
    return Path(output_dir) / subject_id


def is_exported(output_dir: str | os.PathLike, subject_id: str) -> bool:
    """Whether ``<output_dir>/<subject_id>/report.json`` exists (the report is written last)."""
    return (_case_dir(output_dir, subject_id) / REPORT_NAME).is_file()


@contextlib.contextmanager
def staged_case_dir(output_dir: str | os.PathLike, subject_id: str, overwrite: bool = False) -> Iterator[Path]:
    """Yield a hidden staging folder; on success publish it as ``<output_dir>/<subject_id>`` in one rename.

    A crash or exception leaves no ``<subject_id>`` folder (the staging folder is removed); leftovers of a
    killed process (``.<subject_id>.partial-*``) are removed by the next export of the same case.

    Raises:
        FileExistsError: the case folder exists and ``overwrite`` is False.
    """
    output_dir = Path(output_dir)
    final = _case_dir(output_dir, subject_id)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite=True to replace the evidence of {subject_id!r}.")
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in output_dir.glob(f".{subject_id}{_PARTIAL}*"):
        shutil.rmtree(stale, ignore_errors=True)
    # mkdir (not mkdtemp, which makes 0700 folders): the published folder gets the usual permissions
    staging = output_dir / f".{subject_id}{_PARTIAL}{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        yield staging
        if final.exists():
            old = output_dir / f".{subject_id}{_PARTIAL}old-{uuid.uuid4().hex[:12]}"
            os.replace(final, old)
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def reference_image(reference: str | os.PathLike | nib.Nifti1Image) -> nib.Nifti1Image:
    """The input NIfTI whose grid the exports copy (only its header is read).

    Raises:
        FileNotFoundError: the file does not exist.
    """
    if isinstance(reference, nib.Nifti1Image):
        return reference
    path = Path(reference)
    if not path.is_file():
        raise FileNotFoundError(f"reference image {path} (the input T1-CE whose grid the evidence copies) not found.")
    return nib.load(path)


def source_reference(preprocessed_image: MetaTensor) -> str:
    """The input file recorded in the image's metadata (``filename_or_obj``; the first of stacked sequences,
    which share one grid).

    Raises:
        ValueError: the image records no source file.
    """
    meta = getattr(preprocessed_image, "meta", {}) or {}
    reference = meta.get("filename_or_obj")
    if isinstance(reference, (list, tuple)):
        reference = reference[0] if reference else None
    if not reference:
        raise ValueError("the preprocessed image records no source file (meta 'filename_or_obj'); pass reference.")
    return str(reference)


def write_nifti(path: str | os.PathLike, data: np.ndarray, reference: nib.Nifti1Image) -> Path:
    """Atomically write ``data`` (X, Y, Z) with the reference's qform and sform (and their codes).

    A form the reference leaves uncoded is set to the reference's effective affine with code 1 (scanner), so
    every viewer, whichever form it reads, places the volume as it places the reference.
    """
    image = nib.Nifti1Image(np.asarray(data), None)
    qform, qcode = reference.header.get_qform(coded=True)
    sform, scode = reference.header.get_sform(coded=True)
    image.set_sform(sform if scode else reference.affine, code=int(scode) or 1)
    image.set_qform(qform if qcode else reference.affine, code=int(qcode) or 1)
    image.header.set_xyzt_units(*reference.header.get_xyzt_units())
    image.header.set_data_dtype(np.asarray(data).dtype)
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return Path(path)


def native_images(
    volumes: torch.Tensor,
    preprocessed_image: MetaTensor,
    transform: Compose,
    reference: nib.Nifti1Image,
    mode: str = "linear",
    subject_id: str = "",
) -> np.ndarray:
    """Invert the preprocessing for maps on the network grid, and check they land on the reference's grid.

    Args:
        volumes: (N, H, W, D) maps on the grid of ``preprocessed_image``.
        preprocessed_image: the (4, H, W, D) MetaTensor ``transform`` produced (with its applied operations).
        transform: that very ``Compose``.
        reference: the input file (its shape and affine are the expected result).
        mode: ``"linear"`` or ``"nearest"``.
        subject_id: for messages.

    Returns:
        (N, X, Y, Z) float32 on the reference's voxel grid.

    Raises:
        ValueError: when the inverted maps' shape or affine differ from the reference's.
    """
    native = to_native_space(volumes, preprocessed_image, transform, mode=mode)
    shape, expected = tuple(native.shape[1:]), tuple(reference.shape[:3])
    affine = np.asarray(native.affine, dtype=np.float64)
    if shape != expected or not np.allclose(affine, reference.affine, atol=_AFFINE_TOLERANCE_MM, rtol=0):
        raise ValueError(
            f"{subject_id}: inverting the preprocessing gave shape {shape} and affine {affine.round(4).tolist()}, "
            f"but the reference image has shape {expected} and affine {np.round(reference.affine, 4).tolist()}: "
            "the reference is not the file the image was loaded from, or the transform is not the one applied."
        )
    return native.as_tensor().numpy().astype(np.float32, copy=False)


def _names(catalogue: PrototypeCatalogue) -> list[str]:
    return [f"s{s}_k{i:02d}" for s, i in zip(catalogue.scales, catalogue.indices, strict=True)]


def _by_name(names: tuple[str, ...], values: torch.Tensor) -> dict[str, float]:
    return {name: float(v) for name, v in zip(names, values.tolist(), strict=True)}


def case_report(
    evidence: CaseEvidence,
    catalogue: PrototypeCatalogue,
    files: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``report.json`` content of one case (see the module docstring); pure, no file access.

    Args:
        evidence: the case's :class:`~monai_protoshare.explain.evidence.CaseEvidence`.
        catalogue: the network's :class:`~monai_protoshare.explain.evidence.PrototypeCatalogue`.
        files: written file names, recorded under ``files``.
        extra: more top-level entries (model name, checkpoint, geometry, tumour mass ...).
    """
    classes = catalogue.class_names
    rank = {j: r + 1 for r, j in enumerate(evidence.top_prototypes)}
    names = _names(catalogue)
    prototypes = []
    for j, provenance in enumerate(catalogue.provenance):
        prototypes.append(
            {
                "name": names[j],
                "scale": catalogue.scales[j],
                "index": catalogue.indices[j],
                "global_index": j,
                "top_rank": rank.get(j),
                "similarity": float(evidence.similarities[j]),
                "class_weights": _by_name(classes, catalogue.class_weights[:, j]),
                "contributions": _by_name(classes, evidence.contributions[:, j]),
                "sharedness": None if catalogue.sharedness is None else float(catalogue.sharedness[j]),
                "sequence_similarity_drop": _by_name(SEQUENCE_NAMES, evidence.sequence_drops[j]),
                "source": {
                    "subject_id": provenance["source_subject_id"],
                    "box_network_voxels": provenance["source_box"],
                    "push_similarity": provenance["source_similarity"],
                    "push_epoch": provenance["push_epoch"],
                },
            }
        )
    return {
        "format": REPORT_FORMAT,
        "subject_id": evidence.subject_id,
        "prediction": classes[evidence.prediction],
        "probabilities": _by_name(classes, evidence.probabilities),
        "logits": _by_name(classes, evidence.logits),
        "label": None if evidence.label is None else classes[evidence.label],
        "explained_class": classes[evidence.target],
        "top_prototypes": [names[j] for j in evidence.top_prototypes],
        "definitions": {
            "contributions": "class weight x similarity (eq. 31, Fig. 5); they sum over prototypes to the logit",
            "sharedness": "min over classes of the mean similarity over the reference cases of the class "
            "(App. G eq. 29 for one case per class); null without a reference set",
            "sequence_similarity_drop": "similarity minus the similarity with that input sequence set to 0",
            "class_evidence": "eq. 28 map of the explained class, scales density-rescaled (DESIGN §8)",
            "box_network_voxels": "x0, y0, z0, x1, y1, z1 (end exclusive) in the source case's network input",
        },
        "prototypes": prototypes,
        "files": dict(files or {}),
        **dict(extra or {}),
    }


def _overlay_entries(
    label: np.ndarray, cutoff: float, overlay_threshold: float, reference: nib.Nifti1Image
) -> dict[str, Any]:
    """The report's ``overlay`` (rule, cutoff, voxel count of the label) and ``native_space`` (shape, affine)."""
    return {
        "overlay": {
            "label_value": 1,
            "rule": f"class evidence >= min + {overlay_threshold} x (max - min) over the network grid",
            "cutoff": cutoff,
            "voxels": int(label.sum()),
        },
        "native_space": {"shape": list(reference.shape[:3]), "affine": np.asarray(reference.affine).tolist()},
    }


def _write_maps(
    folder: Path, native: np.ndarray, label: np.ndarray, reference: nib.Nifti1Image, top_names: list[str]
) -> dict[str, Any]:
    """Write the class map ``native[0]``, its label overlay and the top prototypes' maps ``native[1:]`` (best
    first) on the reference grid; return the ``files`` entry of the report."""
    files: dict[str, Any] = {"class_evidence": CLASS_MAP_NAME, "label_overlay": LABEL_NAME}
    write_nifti(folder / CLASS_MAP_NAME, native[0], reference)
    write_nifti(folder / LABEL_NAME, label, reference)
    files["prototype_maps"] = []
    for rank, (name, volume) in enumerate(zip(top_names, native[1:], strict=True), start=1):
        file_name = f"prototype_{rank:02d}_{name}.nii.gz"
        write_nifti(folder / file_name, volume, reference)
        files["prototype_maps"].append(file_name)
    return files


def write_case_evidence(
    evidence: CaseEvidence,
    catalogue: PrototypeCatalogue,
    preprocessed_image: MetaTensor,
    transform: Compose,
    output_dir: str | os.PathLike,
    reference: str | os.PathLike | nib.Nifti1Image | None = None,
    *,
    sources: Mapping[int, PrototypeSource] | None = None,
    figure: bool = True,
    overlay_threshold: float = OVERLAY_THRESHOLD,
    tumour_mask: np.ndarray | None = None,
    dicom_seg: Callable[[nib.Nifti1Image, Path], Path] | None = None,
    overwrite: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write one case's evidence to ``<output_dir>/<subject_id>/`` atomically (module docstring).

    Args:
        evidence: from :func:`~monai_protoshare.explain.evidence.explain_cases`.
        catalogue: from :func:`~monai_protoshare.explain.evidence.prototype_catalogue`.
        preprocessed_image: the (4, H, W, D) MetaTensor ``transform`` produced for this case.
        transform: the very preprocessing ``Compose`` (used to invert it).
        output_dir: parent of the case folder.
        reference: the input T1-CE file (or image) whose grid the exports copy; default the file recorded in
            ``preprocessed_image.meta["filename_or_obj"]`` (the four sequences share one grid).
        sources: prototype sources for the figure (:func:`~monai_protoshare.explain.evidence_sources.collect_prototype_sources`).
        figure: also render ``case_figure.png``.
        overlay_threshold: relative level of the label overlay.
        tumour_mask: (X, Y, Z) native-space tumour mask (e.g. seg > 0); adds ``evidence_mass_in_tumour``.
        dicom_seg: called as ``dicom_seg(label_image, staging_folder)`` to add a DICOM SEG; returns its path.
        overwrite: replace an existing case folder.
        extra: more top-level report entries.

    Returns:
        The report written to ``<output_dir>/<subject_id>/report.json``.

    Raises:
        FileExistsError: the case exists and ``overwrite`` is False.
        FileNotFoundError, ValueError: missing reference, maps that do not land on the reference grid, bad mask.
    """
    subject = evidence.subject_id
    reference = reference_image(source_reference(preprocessed_image) if reference is None else reference)
    names = _names(catalogue)
    top = evidence.top_prototypes
    stack = torch.stack([evidence.class_map, *(evidence.maps[j] for j in top)])
    native = native_images(stack, preprocessed_image, transform, reference, "linear", subject)
    cutoff = overlay_cutoff(evidence.class_map, overlay_threshold)
    label = (native[0] >= cutoff).astype(np.uint8)
    report_extra = _overlay_entries(label, cutoff, overlay_threshold, reference)
    if tumour_mask is not None:
        report_extra["evidence_mass_in_tumour"] = evidence_mass_in_mask(native[0], tumour_mask)
    with staged_case_dir(output_dir, subject, overwrite) as staging:
        files = _write_maps(staging, native, label, reference, [names[j] for j in top])
        if figure:
            fig = case_figure(torch.as_tensor(preprocessed_image), evidence, catalogue, sources)
            save_figure(fig, staging / FIGURE_NAME)
            files["figure"] = FIGURE_NAME
        if dicom_seg is not None:
            label_image = nib.load(staging / LABEL_NAME)
            files["dicom_seg"] = Path(dicom_seg(label_image, staging)).name
        report = case_report(evidence, catalogue, files, {**report_extra, **dict(extra or {})})
        write_json(staging / REPORT_NAME, report)
    logger.info("%s: evidence written to %s", subject, Path(output_dir) / subject)
    return report
