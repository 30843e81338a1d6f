"""MONAI Label infer task: the UM-ProtoShare grade of a case and its prototype evidence as a label volume.

The request names one sequence of a case in the studies folder (any of ``<case>_{t1,t1ce,t2,flair}.nii[.gz]``,
BraTS naming, one voxel grid for all four, SRI24 and skull-stripped as the bundle expects). The task

1. finds the case's four sequence files [T1, T1-CE, T2, FLAIR] beside it;
2. runs the bundle's ``preprocessing`` and network (``configs/inference.yaml``, weights ``models/model.pt``);
3. computes the evidence (:func:`monai_protoshare.explain.evidence.explain_cases`, eq. 28 and 31) and writes
   it with :func:`monai_protoshare.explain.evidence_writer.write_case_evidence` on the input's voxel grid;
4. returns the uint8 evidence overlay (label 1 = ``prototype_evidence``, DESIGN §10) as the label file the
   viewer (3D Slicer, OHIF) shows over the image, and the class JSON.

Result JSON: ``prediction`` (class name), ``probabilities`` (name -> value), ``subject_id``, ``label_names``
(``{"prototype_evidence": 1}``), ``top_prototypes`` (name, scale, similarity, contribution to the prediction),
``overlay`` (the rule and voxel count) and ``latencies`` (seconds).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from monai_protoshare.data.cases import case_files
from monai_protoshare.explain.evidence import explain_cases, prototype_catalogue
from monai_protoshare.explain.evidence_writer import LABEL_NAME, write_case_evidence
from monai_protoshare.workflows.options import load_network_weights

__all__ = ["LABEL_NAMES", "ProtoShareEvidenceInfer"]

logger = logging.getLogger(__name__)

#: Label value of the evidence overlay, as the viewer lists it.
LABEL_NAMES = {"prototype_evidence": 1}


class ProtoShareEvidenceInfer(InferTask):
    """Grade (LGG/HGG) and prototype evidence overlay of one case (see the module docstring).

    Args:
        bundle_path: the UM-ProtoShare bundle directory (``configs/inference.yaml``, ``models/model.pt``).
        device: torch device for the network.
        top_k: prototypes listed in the result JSON, by contribution to the predicted class.
    """

    def __init__(self, bundle_path: str | os.PathLike, device: str = "cpu", top_k: int = 5) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1; received {top_k}.")
        super().__init__(
            type=InferType.SEGMENTATION,
            labels=dict(LABEL_NAMES),
            dimension=3,
            description="UM-ProtoShare glioma grade (LGG/HGG) with its prototype evidence as a label overlay",
            config={"top_k": top_k},
        )
        self.bundle_path = Path(bundle_path)
        self.device = torch.device(device)
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any, tuple[str, ...]] | None = None

    def is_valid(self) -> bool:
        return (self.bundle_path / "configs" / "inference.yaml").is_file() and (
            self.bundle_path / "models" / "model.pt"
        ).is_file()

    def info(self) -> dict[str, Any]:
        return {**super().info(), "bundle": str(self.bundle_path), "classes": list(self._class_names())}

    def _class_names(self) -> tuple[str, ...]:
        metadata = json.loads((self.bundle_path / "configs" / "metadata.json").read_text(encoding="utf-8"))
        channel_def = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
        return tuple(channel_def[str(i)] for i in range(len(channel_def)))

    def _load(self) -> tuple[Any, Any, tuple[str, ...]]:
        """(network with the bundle's weights, preprocessing Compose, class names), built once."""
        if self._loaded is None:
            parser = ConfigParser()
            parser.read_config(str(self.bundle_path / "configs" / "inference.yaml"))
            parser["bundle_root"] = str(self.bundle_path)
            network = parser.get_parsed_content("network_def")
            load_network_weights(network, self.bundle_path / "models" / "model.pt", "bundle models/model.pt")
            self._loaded = (
                network.to(self.device).eval(),
                parser.get_parsed_content("preprocessing"),
                self._class_names(),
            )
        return self._loaded

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        start = time.perf_counter()
        case, files = case_files(request["image"])
        top_k = int(request.get("top_k", self.config()["top_k"]))
        with self._lock:
            network, transform, class_names = self._load()
            loaded = time.perf_counter()
            data = transform({"image": files, "subject_id": case})
            image = data["image"]
            [evidence] = explain_cases(network, image.as_tensor()[None].to(self.device), [case], None, top_k)
            inferred = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="umps_label_") as tmp:
                report = write_case_evidence(
                    evidence, prototype_catalogue(network, class_names=class_names), image.cpu(), transform, tmp,
                    files[1], figure=False,
                )  # fmt: skip
                # the server sends this file and deletes it afterwards
                handle, label_file = tempfile.mkstemp(prefix=f"{case}_evidence_", suffix=".nii.gz")
                os.close(handle)
                shutil.move(Path(tmp) / case / LABEL_NAME, label_file)
        by_name = {p["name"]: p for p in report["prototypes"]}
        result = {
            "subject_id": case,
            "prediction": report["prediction"],
            "probabilities": report["probabilities"],
            "label_names": dict(LABEL_NAMES),
            "top_prototypes": [
                {
                    "name": name,
                    "scale": by_name[name]["scale"],
                    "similarity": by_name[name]["similarity"],
                    "contribution": by_name[name]["contributions"][report["prediction"]],
                }
                for name in report["top_prototypes"]
            ],
            "overlay": report["overlay"],
            "latencies": {
                "load": round(loaded - start, 3),
                "infer": round(inferred - loaded, 3),
                "total": round(time.perf_counter() - start, 3),
            },
        }
        logger.info("%s: %s %s", case, result["prediction"], result["probabilities"])
        return label_file, result
