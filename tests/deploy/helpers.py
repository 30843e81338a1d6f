"""Reference predictions for the app tests: the bundle's preprocessing and network run in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser

from monai_protoshare.workflows.options import load_network_weights


def reference_probabilities(bundle: Path, files: list[str]) -> np.ndarray:
    """Softmax of the bundle network's logits on the four sequence files [T1, T1-CE, T2, FLAIR], (C,)."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    network = load_network_weights(parser.get_parsed_content("network_def"), bundle / "models" / "model.pt").eval()
    image = parser.get_parsed_content("preprocessing")({"image": files, "subject_id": "reference"})["image"]
    with torch.no_grad():
        logits = network(image.as_tensor()[None])
    return torch.softmax(logits, dim=1)[0].numpy()
