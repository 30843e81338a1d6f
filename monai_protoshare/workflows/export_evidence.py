"""Batch export of prototype evidence over a datalist (DESIGN §10, issue 7 item 5).

For every case: preprocess, :func:`~monai_protoshare.explain.evidence.explain_cases`, then
:func:`~monai_protoshare.explain.evidence_writer.write_case_evidence` into ``<output_dir>/<subject_id>/``
(native space of the case's T1-CE file; a DICOM SEG too when the case was prepared by ``data_prep`` from a
DICOM study). A tqdm bar shows progress. A case that fails is recorded and the batch goes on; the summary
(``export_summary.json``, printed by the CLI) lists the failures at the end. Case folders appear complete or
not at all, and a re-run skips the finished ones (``--overwrite`` redoes them).

Once per export (only when some case is left to do): ``prototypes.json`` (every prototype's scale, index,
class weights, push provenance and sharedness) and ``prototype_gallery.png`` (every prototype's source slice).
Sharedness (App. G) is computed over a labelled reference set: the training cases of the fold with
``--fold``, otherwise the exported cases.

CLI (the network is the bundle's ``network_def``, and the DICOM SEG writer its ``dicom_seg``, read with
``monai.bundle.ConfigParser`` from ``configs/train.yaml`` layered with ``configs/presets/<preset>.yaml``; explicit
options win)::

    # a trained fold of a bundle: <bundle_root>/outputs/fold0/checkpoints/model.pt -> .../fold0/evidence
    python -m monai_protoshare.workflows.export_evidence --bundle_root bundles/um_protoshare --preset cpu_small \\
        --fold 0 --dataset_dir /data/MICCAI_BraTS2020_TrainingData
    # any checkpoint, any cases
    python -m monai_protoshare.workflows.export_evidence --checkpoint model.pt --dataset_dir DIR \\
        --output_dir OUT --preset paper --model_name um_protoshare --subjects BraTS20_Training_001
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.transforms import Compose
from tqdm import tqdm

from ..data.cases import CLASS_NAMES, SEQUENCES
from ..data.transforms import inference_transforms, transform_error
from ..explain.dicom_seg import SegWriterFactory
from ..explain.evidence import PrototypeCatalogue, PrototypeSource, explain_cases, prototype_catalogue
from ..explain.evidence_sources import collect_prototype_sources, dataset_sharedness
from ..explain.evidence_writer import is_exported, write_case_evidence
from ..explain.figures import prototype_gallery, save_figure
from ..io import write_json
from ..networks import PrototypeNetwork
from .options import BundleOptionError, fold_split, load_datalist, load_network_weights, report_option_error

__all__ = [
    "ExportSummary",
    "bundle_parser",
    "cases_one_per_class_first",
    "export_evidence",
    "export_for_workflow",
    "main",
]

logger = logging.getLogger(__name__)

SUMMARY_NAME = "export_summary.json"
CATALOGUE_NAME = "prototypes.json"
GALLERY_NAME = "prototype_gallery.png"
_T1CE = SEQUENCES.index("t1ce")


@dataclass
class ExportSummary:
    """Outcome of :func:`export_evidence`.

    Attributes:
        output_dir: the export folder.
        written: cases exported by this run.
        skipped: cases already finished (not redone).
        failed: subject id -> error message.
        seconds: subject id -> wall time of its export.
        evidence_mass_in_tumour: subject id -> fraction of the native class evidence inside seg > 0 (cases
            with a segmentation).
    """

    output_dir: str
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    evidence_mass_in_tumour: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        """A short text table for the command line."""
        lines = [
            f"evidence export -> {self.output_dir}",
            f"  written {len(self.written)}, skipped (already done) {len(self.skipped)}, failed {len(self.failed)}",
        ]
        if self.seconds:
            lines.append(f"  seconds per case: median {statistics.median(self.seconds.values()):.2f}")
        masses = [v for v in self.evidence_mass_in_tumour.values() if np.isfinite(v)]
        if masses:
            lines.append(f"  evidence mass inside the tumour: mean {statistics.fmean(masses):.3f} over {len(masses)}")
        lines += [f"  FAILED {subject}: {message}" for subject, message in self.failed.items()]
        return "\n".join(lines)


def _tumour_mask(item: Mapping[str, Any]) -> np.ndarray | None:
    seg = item.get("seg")
    return None if not seg else np.asarray(nib.load(seg).dataobj) > 0


def export_evidence(
    network: PrototypeNetwork,
    datalist: Sequence[Mapping[str, Any]],
    transform: Compose,
    output_dir: str | os.PathLike,
    *,
    top_k: int = 5,
    reference: Sequence[Mapping[str, Any]] | None = None,
    sources_datalist: Sequence[Mapping[str, Any]] | None = None,
    figures: bool = True,
    overwrite: bool = False,
    class_names: Sequence[str] = CLASS_NAMES,
    extra: Mapping[str, Any] | None = None,
    progress: bool = True,
    dicom_seg: SegWriterFactory | None = None,
) -> ExportSummary:
    """Export the evidence of every case of ``datalist`` (module docstring).

    Args:
        network: the trained :class:`~monai_protoshare.networks.PrototypeNetwork`, on its device.
        datalist: items with ``image`` (four paths [T1, T1-CE, T2, FLAIR]) and ``subject_id``; optional
            ``label`` (recorded) and ``seg`` (adds the evidence mass inside the tumour).
        transform: the image-only preprocessing (:func:`~monai_protoshare.data.transforms.inference_transforms`).
        output_dir: the export folder.
        top_k: top contributing prototypes whose maps are written.
        reference: labelled cases for the sharedness (App. G); ``None`` skips it.
        sources_datalist: where prototype source cases are found (default ``datalist`` and ``reference``).
        figures: write the case figures, gallery and prototype sources.
        overwrite: redo finished cases.
        class_names: class names in label order.
        extra: entries added to every report (model, checkpoint ...).
        progress: show a tqdm bar.
        dicom_seg: called with each case's T1-CE file, returns the writer of its DICOM SEG or ``None``
            (``data_prep.evidence_seg.case_seg_writer``); ``None``: no SEG.

    Returns:
        The :class:`ExportSummary` (also written to ``<output_dir>/export_summary.json``).
    """
    output_dir = Path(output_dir)
    summary = ExportSummary(str(output_dir))
    todo = _cases_to_do(datalist, output_dir, overwrite, summary)
    if todo:
        sharedness = dataset_sharedness(network, reference, transform) if reference else None
        catalogue = prototype_catalogue(network, sharedness, class_names)
        write_json(output_dir / CATALOGUE_NAME, asdict(catalogue))
        pool = sources_datalist or [*datalist, *(reference or [])]  # the push's training cases are the reference
        sources = collect_prototype_sources(network, pool, transform) if figures else None
        if figures and (overwrite or not (output_dir / GALLERY_NAME).is_file()):
            save_figure(prototype_gallery(sources, catalogue), output_dir / GALLERY_NAME)
        for item in tqdm(todo, desc="evidence export", disable=not progress):
            subject = str(item["subject_id"])
            start = time.perf_counter()
            try:
                report = _export_case(
                    network, item, transform, output_dir, catalogue, sharedness, sources, top_k=top_k,
                    figures=figures, overwrite=overwrite, extra=extra, dicom_seg=dicom_seg,
                )  # fmt: skip
            except Exception as err:  # reported in the summary; never stops the batch
                err = transform_error(err)
                logger.error("evidence export of %s failed: %s: %s", subject, type(err).__name__, err)
                summary.failed[subject] = f"{type(err).__name__}: {err}"
                continue
            summary.written.append(subject)
            summary.seconds[subject] = time.perf_counter() - start
            if "evidence_mass_in_tumour" in report:
                summary.evidence_mass_in_tumour[subject] = report["evidence_mass_in_tumour"]
    write_json(output_dir / SUMMARY_NAME, asdict(summary))
    return summary


def _export_case(
    network: PrototypeNetwork,
    item: Mapping[str, Any],
    transform: Compose,
    output_dir: Path,
    catalogue: PrototypeCatalogue,
    sharedness: torch.Tensor | None,
    sources: Mapping[int, PrototypeSource] | None,
    *,
    top_k: int,
    figures: bool,
    overwrite: bool,
    extra: Mapping[str, Any] | None,
    dicom_seg: SegWriterFactory | None,
) -> dict[str, Any]:
    """Preprocess, explain and write one case (:func:`export_evidence`'s arguments); return its report."""
    subject = str(item["subject_id"])
    data = transform(dict(item))
    [evidence] = explain_cases(
        network, data["image"].as_tensor()[None], [subject], None, top_k, sharedness, [item.get("label")]
    )
    t1ce = item["image"][_T1CE]
    return write_case_evidence(
        evidence, catalogue, data["image"], transform, output_dir, t1ce, sources=sources, figure=figures,
        tumour_mask=_tumour_mask(item), dicom_seg=dicom_seg(t1ce) if dicom_seg is not None else None,
        overwrite=overwrite, extra=extra,
    )  # fmt: skip


def _cases_to_do(
    datalist: Sequence[Mapping[str, Any]], output_dir: Path, overwrite: bool, summary: ExportSummary
) -> list[Mapping[str, Any]]:
    """The items still to export; finished ones go to ``summary.skipped``, ids that cannot name a folder to
    ``summary.failed``."""
    todo = []
    for item in datalist:
        subject = str(item["subject_id"])
        try:
            done = not overwrite and is_exported(output_dir, subject)
        except ValueError as err:  # an id that cannot name a case folder ("../x", "a b"): reported, never exported
            summary.failed[subject] = f"{type(err).__name__}: {err}"
            continue
        if done:
            summary.skipped.append(subject)
        else:
            todo.append(item)
    return todo


def cases_one_per_class_first(datalist: Sequence[Mapping[str, Any]], count: int) -> list[Mapping[str, Any]]:
    """``count`` cases of ``datalist``: the first case of each class (in label order), then the others in order."""
    firsts = {}
    for item in datalist:
        firsts.setdefault(int(item["label"]), item)
    chosen = [firsts[label] for label in sorted(firsts)]
    chosen += [item for item in datalist if not any(item is c for c in chosen)]
    return chosen[: max(int(count), 0)]


def export_for_workflow(
    workflow: ConfigWorkflow, output_dir: str | os.PathLike, count: int = 2, top_k: int = 5, figures: bool = True
) -> list[Path]:
    """Evidence of ``count`` held-out cases of an initialised bundle ``ConfigWorkflow`` (train + evaluate configs),
    one per grade first; sharedness over the fold's training cases, which are also the prototype sources.

    Reads the workflow's ``network`` (weights loaded by its ``initialize``), ``split``, ``spatial_size``,
    ``pixdim``, ``model_name`` and ``dicom_seg``.

    Returns:
        The case folders that hold evidence (written now or already there).
    """
    get = workflow.parser.get_parsed_content
    train, held_out = get("split")
    cases = cases_one_per_class_first(held_out, count)
    summary = export_evidence(
        get("network"),
        cases,
        inference_transforms(get("spatial_size"), get("pixdim")),
        output_dir,
        top_k=top_k,
        reference=train,
        sources_datalist=[*train, *held_out],
        figures=figures,
        extra={"model_name": get("model_name")},
        dicom_seg=get("dicom_seg"),
    )
    if summary.failed:
        logger.warning("evidence export failed for %s", summary.failed)
    return [Path(output_dir) / s for s in (*summary.skipped, *summary.written)]


# ------------------------------------------------------------------ command line
def bundle_parser(bundle_root: str | os.PathLike, preset: str | None = None, **overrides: Any) -> ConfigParser:
    """The bundle's ``configs/train.yaml`` layered with ``configs/presets/<preset>.yaml`` and ``overrides`` (id ->
    value; ``None`` values are skipped), as ``python -m monai.bundle run`` reads them.

    Raises:
        BundleOptionError: a config file is missing (``--bundle_root``/``--preset``).
    """
    configs = Path(bundle_root) / "configs"
    files = [configs / "train.yaml", *([configs / "presets" / f"{preset}.yaml"] if preset else [])]
    for path in files:
        if not path.is_file():
            raise BundleOptionError("--bundle_root/--preset", f"bundle config {path} not found.")
    parser = ConfigParser()
    parser.read_config([str(path) for path in files])
    parser.update({"bundle_root": str(bundle_root), **{k: v for k, v in overrides.items() if v is not None}})
    parser["network_def#pretrained"] = None  # a checkpoint replaces every weight: no ImageNet file needed
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m monai_protoshare.workflows.export_evidence",
        description="Export prototype evidence (native-space NIfTI, report.json, figures, DICOM SEG) for a datalist.",
    )
    parser.add_argument("--bundle_root", default="bundles/um_protoshare", help="bundle whose configs give the model")
    parser.add_argument("--preset", default=None, help="preset override file of the bundle: cpu_small or paper")
    parser.add_argument("--fold", type=int, default=None, help="export the held-out cases of this fold")
    parser.add_argument("--checkpoint", default=None, help="weights (default <bundle_root>/outputs/fold<k>/...)")
    parser.add_argument("--dataset_dir", default=None, help="BraTS-layout folder (default: the bundle's)")
    parser.add_argument(
        "--output_dir", default=None, help="export folder (default <bundle_root>/outputs/fold<k>/evidence)"
    )
    parser.add_argument("--model_name", default=None, help="network name (default: the bundle's)")
    parser.add_argument("--subjects", nargs="*", default=None, help="only these subject ids")
    parser.add_argument("--top_k", type=int, default=5)
    parser.add_argument("--no_sharedness", action="store_true", help="skip the sharedness reference pass")
    parser.add_argument("--no_figures", action="store_true", help="no PNG figures")
    parser.add_argument("--overwrite", action="store_true", help="redo finished cases")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns 0, 1 when some case failed, 2 for a bad option (named on stderr)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = _export_from_command_line(args)
    except BundleOptionError as err:
        return report_option_error(err)
    print(summary.table())
    return 1 if summary.failed else 0


def _export_from_command_line(args: argparse.Namespace) -> ExportSummary:
    """The export the options ask for: the bundle's ``network_def`` (train.yaml + preset), its weights, its cases."""
    bundle_root = Path(args.bundle_root)
    config = bundle_parser(bundle_root, args.preset, model_name=args.model_name, dataset_dir=args.dataset_dir)
    get = config.get_parsed_content
    fold_dir = bundle_root / "outputs" / f"fold{args.fold if args.fold is not None else 0}"
    checkpoint = Path(args.checkpoint) if args.checkpoint else fold_dir / "checkpoints" / "model.pt"
    network = load_network_weights(get("network_def"), checkpoint, "--checkpoint").to(args.device)
    datalist = load_datalist(get("dataset_dir"))
    cases, reference = datalist, datalist
    if args.fold is not None:
        reference, cases = fold_split(datalist, args.fold, get("n_folds"), get("seed"))
    if args.subjects:
        unknown = sorted(set(args.subjects) - {item["subject_id"] for item in datalist})
        if unknown:
            raise BundleOptionError("--subjects", f"not in the dataset: {unknown}")
        cases = [item for item in datalist if item["subject_id"] in set(args.subjects)]
    return export_evidence(
        network,
        cases,
        inference_transforms(get("spatial_size"), get("pixdim")),
        args.output_dir or fold_dir / "evidence",
        top_k=args.top_k,
        reference=None if args.no_sharedness else reference,
        sources_datalist=datalist,
        figures=not args.no_figures,
        overwrite=args.overwrite,
        dicom_seg=get("dicom_seg") if "dicom_seg" in config else None,
        extra={"model_name": get("model_name"), "checkpoint": str(checkpoint)},
    )


if __name__ == "__main__":
    sys.exit(main())
