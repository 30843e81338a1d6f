"""Operators of the UM-ProtoShare MONAI Deploy application (``app.py``; DESIGN §10-§11, issue 9 item 1).

Graph, one case per run::

    MultiSequenceLoaderOperator --image--> ClassifierBundleOperator --pred---------> ClassificationResultOperator
            |                                      |                                        ^
            +--case------------------------+       +--preprocessed--+                       |
                                           v                        v                       |
                                        EvidenceWriterOperator ---------------evidence------+

* :class:`MultiSequenceLoaderOperator`: the input folder holds a DICOM study or four NIfTI files. A study goes
  through ``data_prep`` (series identification, dcm2niix conversion, registration to SRI24, skull stripping),
  which is the project's one implementation of it; the four volumes, on one grid, are stacked as channels
  [T1, T1-CE, T2, FLAIR] (4, X, Y, Z) exactly as the bundle's ``LoadImaged`` stacks them.
* :class:`ClassifierBundleOperator`: the SDK's ``MonaiBundleInferenceOperator`` on the bundle directory. It
  runs the bundle's ``preprocessing`` (without ``LoadImaged``), ``network`` and ``postprocessing``; it also
  hands the preprocessed image, that transform and the network to the evidence writer, so the evidence explains
  exactly what was classified.
* :class:`EvidenceWriterOperator`: the SDK has no NIfTI writer; this one writes the evidence of
  :mod:`monai_protoshare.explain` (native-space NIfTI maps, label overlay, report, figure) and, for a DICOM
  study, the DICOM SEG over the T1-CE series and the overlay on the original T1-CE grid.
* :class:`ClassificationResultOperator`: the class by our own argmax over the probabilities (the SDK labels
  every probability with the class of ``int(probability)``), written to ``result.json``.

Nothing here is imported by the core package (DESIGN §11).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.deploy.core import AppContext, Fragment, Image, Operator, OperatorSpec
from monai.deploy.operators.monai_bundle_inference_operator import MonaiBundleInferenceOperator, filter_compose
from monai.transforms import Compose, LoadImage, LoadImaged, SaveImage, SaveImaged
from monai.utils import look_up_option

from data_prep.evidence_seg import case_seg_writer
from data_prep.pipeline import PrepOptions, prepare_dicom_study
from monai_protoshare.data.cases import NIFTI_SUFFIXES, SEQUENCES, sequence_files
from monai_protoshare.data.transforms import LoadSequencesd
from monai_protoshare.explain.evidence import explain_cases, prototype_catalogue
from monai_protoshare.explain.evidence_writer import CLASS_MAP_NAME, LABEL_NAME, write_case_evidence, write_nifti
from monai_protoshare.io import write_json

__all__ = [
    "ORIGINAL_T1CE_DIR",
    "RESULT_NAME",
    "SKULL_STRIP_OPTIONS",
    "CaseInput",
    "ClassificationResultOperator",
    "ClassifierBundleOperator",
    "EvidenceWriterOperator",
    "MultiSequenceLoaderOperator",
    "bundle_class_names",
    "classification_result",
    "find_nifti_case",
    "prep_options",
    "resolve_bundle_path",
]

logger = logging.getLogger(__name__)

RESULT_NAME = "result.json"
#: Sub-folder of a DICOM case's evidence holding the overlay on the original T1-CE scan grid.
ORIGINAL_T1CE_DIR = "original_t1ce"
SKULL_STRIP_OPTIONS = ("auto", "on", "off")
_T1CE = SEQUENCES.index("t1ce")
_SUBJECT_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_IO_TRANSFORMS = (LoadImage, LoadImaged, SaveImage, SaveImaged)


@dataclass(frozen=True)
class CaseInput:
    """One case as the loader found it.

    Attributes:
        subject_id: the case id (names the evidence folder).
        files: the four NIfTI files [T1, T1-CE, T2, FLAIR] on one voxel grid (the model input).
        kind: ``"dicom"`` (prepared by ``data_prep`` from a study) or ``"nifti"`` (given as is).
        case_dir: the ``data_prep`` case folder (with its record) for a DICOM study, else ``None``.
    """

    subject_id: str
    files: tuple[str, ...]
    kind: str
    case_dir: str | None = None


def _subject_id(name: str) -> str:
    """A folder name usable as a case id (letters, digits, ``._-``, starting with a letter or digit)."""
    cleaned = _SUBJECT_CHARS.sub("_", name).lstrip("._-")
    return cleaned or "case"


def find_nifti_case(folder: str | os.PathLike) -> CaseInput | None:
    """The four sequence files ``*_{t1,t1ce,t2,flair}.nii[.gz]`` in ``folder`` or in its one sub-folder.

    Returns:
        The case (subject id: the folder holding the files), or ``None`` when ``folder`` holds no NIfTI file.

    Raises:
        ValueError: NIfTI files are present but a sequence is missing or given twice.
    """
    folder = Path(folder)
    candidates = [folder, *sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))]
    for place in candidates:
        niftis = [p for p in place.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES)]
        if not niftis:
            continue
        found = {}
        for sequence, matches in sequence_files(place).items():
            if len(matches) != 1:
                raise ValueError(
                    f"input folder {place}: expected exactly one *_{sequence}.nii[.gz] file among the NIfTI files "
                    f"{sorted(p.name for p in niftis)}; found {len(matches)}."
                )
            found[sequence] = str(matches[0])
        return CaseInput(_subject_id(place.name), tuple(found[s] for s in SEQUENCES), "nifti")
    return None


def prep_options(environ: Mapping[str, str] = os.environ) -> PrepOptions:
    """``data_prep`` options for a DICOM study, from the environment.

    ``UMPS_SKULL_STRIP``: ``auto`` (default: on for DICOM), ``on`` or ``off`` (the study is already
    skull-stripped); ``UMPS_REGISTRATION_SPACING``: atlas spacing in mm for the registration (default 1.5;
    coarser is faster); ``UMPS_THREADS``: threads for SimpleITK and torch.

    Raises:
        ValueError: an unknown skull-strip option (the closest valid one is suggested) or a bad number.
    """
    strip = look_up_option(environ.get("UMPS_SKULL_STRIP", "auto").lower(), SKULL_STRIP_OPTIONS)
    kwargs: dict[str, Any] = {"skull_strip": None if strip == "auto" else strip == "on", "overwrite": True}
    for variable, key, kind in (("UMPS_REGISTRATION_SPACING", "registration_spacing", float), ("UMPS_THREADS", "threads", int)):  # fmt: skip
        if environ.get(variable):
            try:
                kwargs[key] = kind(environ[variable])
            except ValueError:
                raise ValueError(f"{variable} must be a {kind.__name__}; received {environ[variable]!r}.") from None
    return PrepOptions(**kwargs)


def resolve_bundle_path(app_context: AppContext, environ: Mapping[str, str] = os.environ) -> Path:
    """The bundle directory: ``UMPS_BUNDLE_PATH``, else the model path (``-m``, ``HOLOSCAN_MODEL_PATH``; the
    bundle itself or a folder holding it, as in a MAP), else the repository's ``bundles/um_protoshare``.

    Raises:
        FileNotFoundError: no candidate holds ``configs/inference.yaml`` and ``models/model.pt``.
    """
    candidates = []
    if environ.get("UMPS_BUNDLE_PATH"):
        candidates.append(Path(environ["UMPS_BUNDLE_PATH"]))
    if app_context.model_path:
        model_path = Path(app_context.model_path)
        candidates += [model_path, model_path / "um_protoshare"]
    candidates.append(Path(__file__).resolve().parents[2] / "bundles" / "um_protoshare")
    for candidate in candidates:
        if (candidate / "configs" / "inference.yaml").is_file() and (candidate / "models" / "model.pt").is_file():
            return candidate.resolve()
    raise FileNotFoundError(
        "no UM-ProtoShare bundle with configs/inference.yaml and trained models/model.pt found in "
        f"{[str(c) for c in candidates]}; set UMPS_BUNDLE_PATH or pass -m <bundle folder>."
    )


def bundle_class_names(bundle_path: str | os.PathLike) -> tuple[str, ...]:
    """Class names in label order from the bundle's ``network_data_format.outputs.pred.channel_def``."""
    metadata = json.loads((Path(bundle_path) / "configs" / "metadata.json").read_text(encoding="utf-8"))
    channel_def = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    return tuple(channel_def[str(i)] for i in range(len(channel_def)))


class MultiSequenceLoaderOperator(Operator):
    """Load one case: a DICOM study (four MR series identified and registered by ``data_prep``) or four NIfTI files.

    Named outputs:
        image: :class:`~monai.deploy.core.Image` of the four sequences stacked as channels, (4, X, Y, Z) float32,
            with the metadata ``LoadImage`` gives (affine, original_channel_dim 0, source file names).
        case: the :class:`CaseInput`.

    Args:
        fragment: the application.
        input_folder: the study folder (DICOM files, any layout) or a folder with the four NIfTI files
            ``*_{t1,t1ce,t2,flair}.nii[.gz]`` (SRI24, skull-stripped, as the bundle expects).
        prepared_folder: where ``data_prep`` writes a DICOM case (volumes and its record).
        options: ``data_prep`` options for a DICOM study.
        subject_id: case id for a DICOM study (default: the study folder's name).
    """

    def __init__(
        self,
        fragment: Fragment,
        *args,
        input_folder: str | os.PathLike,
        prepared_folder: str | os.PathLike,
        options: PrepOptions,
        subject_id: str | None = None,
        **kwargs,
    ) -> None:
        self.input_folder = Path(input_folder)
        self.prepared_folder = Path(prepared_folder)
        self.options = options
        self.subject_id = subject_id
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("image")
        spec.output("case")

    def load_case(self) -> CaseInput:
        """Find or prepare the case's four sequence files.

        Raises:
            FileNotFoundError: the input folder does not exist.
            ValueError, KeyError: an incomplete NIfTI case or a bad study (``data_prep``'s messages).
        """
        if not self.input_folder.is_dir():
            raise FileNotFoundError(
                f"input folder {self.input_folder} does not exist (pass -i <study or case folder>)."
            )
        case = find_nifti_case(self.input_folder)
        if case is not None:
            return case
        subject = self.subject_id or _subject_id(self.input_folder.resolve().name)
        case_dir = prepare_dicom_study(self.input_folder, self.prepared_folder, subject, self.options)
        files = tuple(str(case_dir / f"{subject}_{sequence}.nii.gz") for sequence in SEQUENCES)
        return CaseInput(subject, files, "dicom", str(case_dir))

    def compute(self, op_input, op_output, context) -> None:
        case = self.load_case()
        logger.info("%s (%s): %s", case.subject_id, case.kind, ", ".join(Path(f).name for f in case.files))
        # the bundle's own loader (header and voxel checks naming the bad file), outside the bundle operator
        # because the SDK feeds that operator in-memory images only
        stacked = LoadSequencesd("image")({"image": list(case.files), "subject_id": case.subject_id})["image"]
        op_output.emit(Image(stacked.numpy(), metadata=dict(stacked.meta)), "image")
        op_output.emit(case, "case")


class ClassifierBundleOperator(MonaiBundleInferenceOperator):
    """``MonaiBundleInferenceOperator`` for the classification bundle, plus the preprocessed input for evidence.

    Differences from the SDK operator:

    * a ``postprocessing`` that is a single transform (not a ``Compose``) is accepted;
    * the post-processing gets the prediction of the single case without its batch axis, (C,), so a softmax
      over axis 0 is a softmax over the classes (on the batched (1, C) it would run over the batch);
    * named output ``preprocessed``: ``{"image": (4, H, W, D) MetaTensor with its applied operations,
      "transform": the preprocessing Compose, "network": the loaded network}`` for the evidence writer.

    The ``pred`` output is the SDK's dict; use only its ``"probabilities"`` (its ``"result"`` labels are wrong).
    """

    def __init__(self, fragment: Fragment, *args, **kwargs) -> None:
        self._preprocessed: MetaTensor | None = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        super().setup(spec)
        spec.output("preprocessed")

    def _get_compose(self, obj_name, disallowed_prefixes):
        if self._parser.get(obj_name) is None:
            return Compose([])
        transform = self._parser.get_parsed_content(obj_name)
        compose = filter_compose(
            transform if isinstance(transform, Compose) else Compose([transform]), disallowed_prefixes
        )
        # the SDK filters by class name; loaders and savers under other names (LoadSequencesd) go by type
        compose.transforms = tuple(t for t in compose.transforms if not isinstance(t, _IO_TRANSFORMS))
        return compose

    def pre_process(self, data, *args, **kwargs):
        processed = super().pre_process(data, *args, **kwargs)
        self._preprocessed = processed[next(iter(self._inputs))]
        return processed

    def post_process(self, data, *args, **kwargs):
        if isinstance(data, torch.Tensor) and data.ndim == 2 and data.shape[0] == 1:
            data = data[0]
        return super().post_process(data, *args, **kwargs)

    def compute(self, op_input, op_output, context) -> None:
        super().compute(op_input, op_output, context)
        preprocessed = {"image": self._preprocessed, "transform": self._preproc, "network": self._model_network}
        op_output.emit(preprocessed, "preprocessed")


class EvidenceWriterOperator(Operator):
    """Write the prototype evidence of the case into ``<output_folder>/<subject_id>/`` (DESIGN §10).

    Files (:mod:`monai_protoshare.explain.evidence_writer`): ``class_evidence.nii.gz``, ``evidence_label.nii.gz``
    (uint8 overlay), ``prototype_*.nii.gz``, ``report.json`` and, with ``figure``, ``case_figure.png``; all on the
    voxel grid of the model-input T1-CE (for NIfTI input: the given file). For a DICOM study also
    ``evidence_seg.dcm`` (a DICOM SEG over the source T1-CE series) and ``original_t1ce/{class_evidence,
    evidence_label}.nii.gz`` on the original T1-CE scan grid (``data_prep.native_space.map_to_original``).

    Named inputs: ``case`` (:class:`CaseInput`), ``preprocessed`` (from :class:`ClassifierBundleOperator`).
    Named output: ``evidence``: ``{"report": report.json content, "folder": case evidence folder}``.
    """

    def __init__(
        self, fragment: Fragment, *args, output_folder: str | os.PathLike, top_k: int = 5, figure: bool = True, **kwargs
    ) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1; received {top_k}.")
        self.output_folder = Path(output_folder)
        self.top_k, self.figure = int(top_k), bool(figure)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("case")
        spec.input("preprocessed")
        spec.output("evidence")

    def compute(self, op_input, op_output, context) -> None:
        case: CaseInput = op_input.receive("case")
        preprocessed = op_input.receive("preprocessed")
        network, image = preprocessed["network"], preprocessed["image"]
        device = next(network.parameters()).device
        [evidence] = explain_cases(network, image.as_tensor()[None].to(device), [case.subject_id], None, self.top_k)
        t1ce = case.files[_T1CE]
        report = write_case_evidence(
            evidence,
            prototype_catalogue(network),
            image.cpu(),
            preprocessed["transform"],
            self.output_folder,
            t1ce,
            figure=self.figure,
            dicom_seg=case_seg_writer(t1ce),
            overwrite=True,
            extra={"input_kind": case.kind},
        )
        folder = self.output_folder / case.subject_id
        if case.case_dir is not None:
            self._write_original_t1ce(folder, case)
        op_output.emit({"report": report, "folder": str(folder)}, "evidence")

    @staticmethod
    def _write_original_t1ce(folder: Path, case: CaseInput) -> None:
        """The class evidence and the overlay on the T1-CE scan as acquired (the DICOM series' own grid)."""
        import nibabel as nib

        from data_prep.native_space import load_case_record, map_to_original

        record = load_case_record(case.case_dir)
        target = folder / ORIGINAL_T1CE_DIR
        target.mkdir(exist_ok=True)
        for name, interpolation in ((CLASS_MAP_NAME, "linear"), (LABEL_NAME, "nearest")):
            native = map_to_original(nib.load(folder / name), record, "t1ce", interpolation)
            write_nifti(target / name, np.asarray(native.dataobj), native)


class ClassificationResultOperator(Operator):
    """Write ``<output_folder>/result.json``: the class by argmax over the bundle's probabilities, and the evidence.

    Named inputs: ``pred`` (the SDK's probabilities dict), ``evidence`` (from :class:`EvidenceWriterOperator`).

    ``result.json``: ``subject_id``, ``prediction`` (class name), ``probabilities`` (name -> value),
    ``input_kind``, ``evidence_folder``, ``evidence_files`` (relative to the output folder; a DICOM study adds
    ``dicom_seg`` and ``original_t1ce``), ``evidence_agrees`` (the evidence explains the same prediction).

    Args:
        fragment: the application.
        output_folder: where ``result.json`` goes.
        class_names: class names in label order (the bundle's ``channel_def``).
    """

    def __init__(
        self, fragment: Fragment, *args, output_folder: str | os.PathLike, class_names: Sequence[str], **kwargs
    ) -> None:
        self.output_folder = Path(output_folder)
        self.class_names = tuple(class_names)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("pred")
        spec.input("evidence")

    def compute(self, op_input, op_output, context) -> None:
        pred = op_input.receive("pred")
        evidence = op_input.receive("evidence")
        result = classification_result(
            pred, evidence["report"], Path(evidence["folder"]), self.output_folder, self.class_names
        )
        write_json(self.output_folder / RESULT_NAME, result)
        logger.info("%s: %s %s", result["subject_id"], result["prediction"], result["probabilities"])


def classification_result(
    pred: Mapping[str, Any],
    report: Mapping[str, Any],
    evidence_folder: Path,
    output_folder: Path,
    class_names: Sequence[str],
) -> dict[str, Any]:
    """The ``result.json`` content (see :class:`ClassificationResultOperator`); pure.

    Args:
        pred: the SDK's probabilities dict; only ``"probabilities"`` (C,) is read.
        report: the evidence ``report.json`` content.
        evidence_folder: the case's evidence folder.
        output_folder: the app's output folder (paths in the result are relative to it).
        class_names: class names in label order.

    Raises:
        ValueError: the probabilities do not have one value per class.
    """
    class_names = tuple(class_names)
    probabilities = np.asarray(pred["probabilities"], dtype=np.float64).reshape(-1)
    if probabilities.size != len(class_names):
        raise ValueError(
            f"pred['probabilities'] must hold one value per class {class_names}; received {probabilities}."
        )
    prediction = class_names[int(np.argmax(probabilities))]
    if prediction != report["prediction"]:
        logger.warning("evidence explains %s but the bundle predicted %s", report["prediction"], prediction)
    folder = evidence_folder
    relative = folder.relative_to(output_folder) if folder.is_relative_to(output_folder) else folder
    evidence_files = {key: _relative(relative, value) for key, value in dict(report["files"]).items()}
    if (folder / ORIGINAL_T1CE_DIR).is_dir():
        evidence_files["original_t1ce"] = {
            "class_evidence": str(relative / ORIGINAL_T1CE_DIR / CLASS_MAP_NAME),
            "label_overlay": str(relative / ORIGINAL_T1CE_DIR / LABEL_NAME),
        }
    return {
        "subject_id": report["subject_id"],
        "prediction": prediction,
        "probabilities": {name: float(p) for name, p in zip(class_names, probabilities, strict=True)},
        "input_kind": report.get("input_kind"),
        "evidence_folder": str(relative),
        "evidence_files": evidence_files,
        "evidence_agrees": prediction == report["prediction"],
    }


def _relative(folder: Path, value: Any) -> Any:
    if isinstance(value, str):
        return str(folder / value)
    if isinstance(value, list):
        return [str(folder / v) for v in value]
    return value
