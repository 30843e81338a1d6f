"""The ProtoSeg case figure (explain/seg_case_figure.py and its command line docs/seg_case_figure.py) on a tiny
proto_seg trained and pushed through its bundle."""

from __future__ import annotations

import importlib.util
import json

import torch
import torch.nn.functional as F

from monai_protoshare.explain.seg_case_figure import seg_case_figure, tumour_voxel
from monai_protoshare.workflows.demo import bundle_workflow
from tests.bundles.conftest import BUNDLES_DIR
from tests.bundles.test_seg_bundles import MODEL, TINY_SEG


def _cli():
    spec = importlib.util.spec_from_file_location(
        "seg_case_figure_cli", BUNDLES_DIR.parent / "docs" / "seg_case_figure.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tumour_voxel_is_the_largest_logit_inside_the_mask():
    logits = torch.zeros(3, 4, 4, 2)
    logits[1, 0, 0, 0] = 9.0  # outside the mask
    logits[1, 2, 3, 1] = 5.0
    mask = torch.zeros(4, 4, 2, dtype=torch.bool)
    mask[2:, 2:] = True
    assert tumour_voxel(logits, 1) == (0, 0, 0) and tumour_voxel(logits, 1, mask) == (2, 3, 1)


def test_case_figure_of_a_trained_fold_shows_the_voxels_top_prototypes_and_writes_a_png(bundle_cohort, tmp_path):
    overrides = {**TINY_SEG, **MODEL["proto_seg"], "epochs": 2, "model_path": None}
    workflow = bundle_workflow(
        BUNDLES_DIR / "proto_seg", ["train.yaml"], **overrides, dataset_dir=str(bundle_cohort), output_dir=str(tmp_path)
    )
    workflow.run()
    workflow.finalize()
    fold_dir = tmp_path / "fold0"
    held_out = workflow.parser.get_parsed_content("split")[1][0]["subject_id"]

    out = tmp_path / "figure.png"
    _cli().main(["--fold_dir", str(fold_dir), "--case", held_out, "--out", str(out), "--top_k", "2"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    network = workflow.parser.get_parsed_content("network").eval()
    case = workflow.parser.get_parsed_content("validate#preprocessing")(
        next(i for i in workflow.parser.get_parsed_content("datalist") if i["subject_id"] == held_out)
    )
    image, mask = case["image"].as_tensor(), case["seg"][1].as_tensor() > 0
    provenance = json.loads((fold_dir / "prototypes.json").read_text())["prototypes"]
    sources = []

    def source(subject):
        sources.append(subject)
        return image

    _, explanation, voxel = seg_case_figure(network, image, provenance, source, mask=mask, top_k=2)
    with torch.no_grad():
        output = network.forward_features(image[None])
    assert mask[voxel] and output.logits[0, 1][voxel] == output.logits[0, 1][mask].max()
    # the two prototypes shown are those with the largest w_{WT,k} up(S_k)(v), and their sources were looked up
    up = F.interpolate(output.similarities, size=image.shape[1:], mode="trilinear")[0][(slice(None), *voxel)]
    contributions = network.region_weights[1].detach() * up
    assert explanation.prototypes[1].tolist() == contributions.topk(2).indices.tolist()
    assert sources == [provenance[k]["subject_id"] for k in explanation.prototypes[1].tolist()]
