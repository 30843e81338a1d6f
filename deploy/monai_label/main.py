"""UM-ProtoShare MONAI Label app (issue 9 item 2; DESIGN §10-§11): one infer task serving the bundle.

Start (in deploy/.venv-label; ``deploy/monai_label/serve.sh`` does the same with loopback as the default)::

    monailabel start_server --app deploy/monai_label --studies <studies> --host 127.0.0.1 --port 8000 \\
        [--conf bundle <bundle dir>] [--conf device cpu|cuda] [--conf top_k 5]

``<studies>``: a flat folder of ``<case>_{t1,t1ce,t2,flair}.nii.gz`` (BraTS naming; SRI24, skull-stripped, e.g.
``data_prep`` output copied flat). Infer on any sequence of a case, e.g. the T1-CE::

    curl -X POST "http://127.0.0.1:8000/infer/um_protoshare?image=<case>_t1ce&output=all"

Image ids are the datastore's ids only: a path, an id with a path separator or ``..``, an uploaded file or an id
that resolves outside the studies folder is refused (HTTP 403), an unknown id is HTTP 404, a case with a
missing sequence HTTP 422. Bundle default: ``<app>/model/um_protoshare`` when it holds ``models/model.pt``,
else the repository's ``bundles/um_protoshare``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from fastapi import HTTPException
from lib.evidence_infer import ProtoShareEvidenceInfer
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask

logger = logging.getLogger(__name__)

MODEL_NAME = "um_protoshare"
_REPO_BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "um_protoshare"


def default_bundle(app_dir: str | os.PathLike) -> Path:
    """``<app_dir>/model/um_protoshare`` when it holds trained weights, else the repository's bundle."""
    local = Path(app_dir) / "model" / MODEL_NAME
    return local if (local / "models" / "model.pt").is_file() else _REPO_BUNDLE


def image_in_studies(datastore, image_id: Any, studies: str | os.PathLike) -> str:
    """The path of datastore image ``image_id``, which must lie inside the studies folder.

    Raises:
        HTTPException: 403 for anything but a plain datastore id (a path, ``..``, a separator, an uploaded
            file) or an id resolving outside ``studies``; 404 for an unknown id.
    """
    if (
        not isinstance(image_id, str)
        or not image_id
        or image_id in (".", "..")
        or any(c in image_id for c in ("/", "\\", "\0"))
    ):
        raise HTTPException(
            status_code=403, detail=f"image must be an image id of the studies folder; got {image_id!r}"
        )
    uri = datastore.get_image_uri(image_id)
    if not uri:
        raise HTTPException(status_code=404, detail=f"image {image_id!r} is not in the studies folder")
    root, path = os.path.realpath(studies), os.path.realpath(uri)
    if os.path.commonpath([root, path]) != root:
        raise HTTPException(status_code=403, detail=f"image {image_id!r} resolves outside the studies folder")
    return path


class UMProtoShareLabelApp(MONAILabelApp):
    """MONAI Label app with the ``um_protoshare`` infer task (see the module docstring)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.bundle_path = Path(conf.get("bundle") or default_bundle(app_dir)).resolve()
        self.device = conf.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        self.top_k = int(conf.get("top_k", "5"))
        self.studies_folder = studies
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="UM-ProtoShare",
            description="Interpretable LGG/HGG grading with shared multi-scale prototypes; evidence as a label overlay",
            version="0.1.0",
        )

    def init_infers(self) -> dict[str, InferTask]:
        task = ProtoShareEvidenceInfer(self.bundle_path, self.device, self.top_k)
        if not task.is_valid():
            logger.warning("%s: no configs/inference.yaml or models/model.pt; infer will fail", self.bundle_path)
        return {MODEL_NAME: task}

    def infer(self, request: dict[str, Any], datastore=None) -> dict[str, Any]:
        """Refuse any image but a datastore id inside the studies folder, then run the task (module docstring)."""
        datastore = datastore or self.datastore()
        request = {**request, "image": image_in_studies(datastore, request.get("image"), self.studies_folder)}
        try:
            return super().infer(request, datastore)
        except (ValueError, FileNotFoundError) as err:  # a bad case, named in the message
            raise HTTPException(status_code=422, detail=str(err)) from err
