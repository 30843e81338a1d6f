"""UM-ProtoShare as a MONAI Deploy application: a DICOM study (or four NIfTI files) in; class, probabilities,
native-space evidence NIfTI overlays and a DICOM SEG of the evidence out (issue 9 item 1; DESIGN §10-§11).

Run (in deploy/.venv-deploy; ``ulimit -s 32768`` quiets Holoscan's stack-size warning)::

    python deploy/monai_deploy/app.py -i <study or case folder> -o <output folder>

Settings come from the environment (all optional): ``UMPS_BUNDLE_PATH`` (the bundle directory with trained
``models/model.pt``; default: ``-m``/``HOLOSCAN_MODEL_PATH`` when it holds the bundle, else the repository's
``bundles/um_protoshare``), ``UMPS_SUBJECT_ID``, ``UMPS_TOP_K`` (5), ``UMPS_FIGURES`` (1), and the DICOM
preparation options of :func:`umps_operators.prep_options`.

Output folder: ``result.json``, ``evidence/<subject>/`` and, for a DICOM study, ``prepared/<subject>/`` (the
SRI24-registered sequences ``data_prep`` made, with their record). See ``deploy/README.md``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application, Image, IOType
from monai.deploy.operators.monai_bundle_inference_operator import BundleConfigNames, IOMapping
from umps_operators import (
    ClassificationResultOperator,
    ClassifierBundleOperator,
    EvidenceWriterOperator,
    MultiSequenceLoaderOperator,
    bundle_class_names,
    prep_options,
    resolve_bundle_path,
)

__all__ = ["UMProtoShareApp"]

logger = logging.getLogger(__name__)


def _flag(name: str, default: str) -> bool:
    value = os.environ.get(name, default).strip().lower()
    if value not in ("0", "1", "false", "true", "no", "yes"):
        raise ValueError(f"{name} must be 0/1, true/false or yes/no; received {value!r}.")
    return value in ("1", "true", "yes")


class UMProtoShareApp(Application):
    """Glioma grade (LGG/HGG) with prototype evidence for one four-sequence MR case (see the module docstring)."""

    def compose(self) -> None:
        app_context: AppContext = Application.init_app_context(self.argv)
        input_folder, output_folder = Path(app_context.input_path), Path(app_context.output_path)
        bundle_path = resolve_bundle_path(app_context)
        # The SDK's model factory would wrap a bundle folder given by -m as a generic Model with no predictor
        # ("A predictor of the model is not set"); the bundle operator loads the directory itself instead.
        app_context.models = None
        logger.info("bundle %s; input %s; output %s", bundle_path, input_folder, output_folder)

        loader = MultiSequenceLoaderOperator(
            self,
            CountCondition(self, 1),
            input_folder=input_folder,
            prepared_folder=output_folder / "prepared",
            options=prep_options(),
            subject_id=os.environ.get("UMPS_SUBJECT_ID") or None,
            name="sequence_loader",
        )
        classifier = ClassifierBundleOperator(
            self,
            app_context=app_context,
            input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping("pred", dict[str, Any], IOType.IN_MEMORY)],
            bundle_path=bundle_path,
            bundle_config_names=BundleConfigNames(config_names=["inference"]),
            name="bundle_inference",
        )
        evidence = EvidenceWriterOperator(
            self,
            output_folder=output_folder / "evidence",
            top_k=int(os.environ.get("UMPS_TOP_K", "5")),
            figure=_flag("UMPS_FIGURES", "1"),
            name="evidence_writer",
        )
        result = ClassificationResultOperator(
            self, output_folder=output_folder, class_names=bundle_class_names(bundle_path), name="classification_result"
        )
        self.add_flow(loader, classifier, {("image", "image")})
        self.add_flow(loader, evidence, {("case", "case")})
        self.add_flow(classifier, evidence, {("preprocessed", "preprocessed")})
        self.add_flow(classifier, result, {("pred", "pred")})
        self.add_flow(evidence, result, {("evidence", "evidence")})


if __name__ == "__main__":
    UMProtoShareApp().run()
