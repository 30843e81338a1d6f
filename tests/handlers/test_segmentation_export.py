"""Segmentation export (handlers/segmentation_export.py): BraTS labels of the regions, and the DICOM SEG of a case
made from DICOM through the grading evidence's ``dicom_seg`` factory (data_prep.evidence_seg.case_seg_writer)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_protoshare.handlers import SegmentationExportHandler
from monai_protoshare.handlers.segmentation_export import SEGMENTATION_SEG_NAME, regions_to_brats_labels
from tests.explain.evidence_cases import image_transform, write_case, write_dicom_case


class NestedFlair(torch.nn.Module):
    """Regions by FLAIR brightness: WT above its mean, TC half a standard deviation higher, ET one higher."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flair = x[:, 3:4]
        z = (flair - flair.mean()) / flair.std()
        return self.scale * torch.cat([z - 0.5, z, z - 1.0], dim=1)  # [TC, WT, ET]


def test_regions_become_brats_labels_inside_out():
    masks = torch.zeros(3, 4, 1, 1)
    masks[1, :3] = 1  # WT
    masks[0, :2] = 1  # TC
    masks[2, :1] = 1  # ET
    assert regions_to_brats_labels(masks).flatten().tolist() == [4, 1, 2, 0]


def test_a_case_made_from_dicom_gets_its_segmentation_as_a_seg_on_its_t1ce_series(tmp_path):
    pytest.importorskip("highdicom")
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("SimpleITK")
    from data_prep.evidence_seg import case_seg_writer
    from monai_protoshare.explain.dicom_seg import read_series, series_label_volume

    item, series_uid, paths = write_dicom_case(tmp_path / "data", tmp_path / "dicom")
    transform = image_transform()
    image = transform({"image": item["image"], "subject_id": "caseD"})["image"]
    handler = SegmentationExportHandler(transform, tmp_path / "out", NestedFlair(), dicom_seg=case_seg_writer)
    case_dir = handler.export(image, "caseD")

    segmentation = nib.load(case_dir / "segmentation.nii.gz")
    assert set(np.unique(np.asarray(segmentation.dataobj)).tolist()) == {0, 1, 2, 4}
    seg = pydicom.dcmread(case_dir / SEGMENTATION_SEG_NAME)
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    assert seg.FrameOfReferenceUID == pydicom.dcmread(paths[0]).FrameOfReferenceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Whole tumour", "Tumour core", "Enhancing tumour"]
    datasets = read_series(paths)
    labels = series_label_volume(segmentation, datasets, binary=False)  # BraTS labels on the source instances
    import highdicom as hd

    pixels = hd.seg.segread(seg.filename).get_pixels_by_source_instance(
        source_sop_instance_uids=[ds.SOPInstanceUID for ds in datasets], segment_numbers=[1, 2, 3]
    )
    for i, values in enumerate(((1, 2, 4), (1, 4), (4,))):  # nested regions: the segments overlap
        expected = np.isin(labels, values)
        assert expected.any() and np.array_equal(pixels[..., i], expected)
    names = sorted(p.name for p in case_dir.iterdir())
    assert names == ["probabilities.nii.gz", "segmentation.nii.gz", SEGMENTATION_SEG_NAME]

    # a case data_prep did not make from DICOM (no record): the factory gives no writer, and no SEG is written
    other = write_case(tmp_path / "nifti", "caseN", label=1)
    image = transform({"image": other["image"], "subject_id": "caseN"})["image"]
    assert not (handler.export(image, "caseN") / SEGMENTATION_SEG_NAME).exists()


def test_export_runs_the_network_in_eval_mode_and_restores_its_mode(tmp_path):
    from monai_protoshare.networks import build_network

    torch.manual_seed(0)
    network = build_network("proto_seg", encoder_layers=[1], encoder_widths=[4], embedding_dim=6, num_prototypes=4)
    assert network.training  # as after a MONAI evaluator's iteration, which restores the mode it found
    buffers = {k: v.clone() for k, v in network.named_buffers()}
    transform = image_transform()
    item = write_case(tmp_path / "data", "caseA", label=1)
    image = transform({"image": item["image"], "subject_id": "caseA"})["image"]
    case_dir = SegmentationExportHandler(transform, tmp_path / "out", network, top_k=1).export(image, "caseA")
    assert network.training and all(torch.equal(v, buffers[k]) for k, v in network.named_buffers())
    report = json.loads((case_dir / "report.json").read_text())
    assert len(report["top_prototypes_wt"]) == 1 and (case_dir / "segmentation.nii.gz").is_file()
