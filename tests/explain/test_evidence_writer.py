import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_protoshare.explain import evidence_writer
from monai_protoshare.explain.evidence import explain_cases, overlay_cutoff, prototype_catalogue
from monai_protoshare.explain.evidence_writer import (
    CLASS_MAP_NAME,
    LABEL_NAME,
    REPORT_NAME,
    is_exported,
    write_case_evidence,
)
from tests.explain.evidence_cases import image_transform, tiny_network, write_case


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """One oblique, anisotropic input case, preprocessed, and the tiny network's evidence for it."""
    item = write_case(tmp_path_factory.mktemp("data"), "case001", label=1)
    transform = image_transform()
    image = transform(dict(item))["image"]
    net = tiny_network()
    with torch.no_grad():
        net.classifier.weight.copy_(torch.randn(2, 30, generator=torch.Generator().manual_seed(0)))
    [evidence] = explain_cases(net, image.as_tensor()[None], ["case001"], top_k=2, labels=[1])
    return item, transform, image, net, evidence


def _blob(shape, centre, sigma=1.5):
    grid = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in shape), indexing="ij"))
    distance = ((grid - torch.tensor(centre, dtype=torch.float32).view(3, 1, 1, 1)) ** 2).sum(0)
    return torch.exp(-distance / (2 * sigma**2))


def test_blob_lands_at_its_native_world_position_on_an_oblique_anisotropic_input(case, tmp_path):
    item, transform, image, net, evidence = case
    centre = (9.0, 6.0, 4.0)  # network-grid voxel, off-centre on purpose
    blob = dataclasses.replace(evidence, class_map=_blob((16, 16, 8), centre))
    write_case_evidence(
        blob, prototype_catalogue(net), image, transform, tmp_path / "out", item["image"][1], figure=False
    )
    expected_world = (np.asarray(image.affine) @ np.array([*centre, 1.0]))[:3]  # where the blob is, in mm

    exported = nib.load(tmp_path / "out" / "case001" / CLASS_MAP_NAME)
    source = nib.load(item["image"][1])
    assert exported.shape == source.shape and exported.get_data_dtype() == np.float32
    assert np.allclose(exported.affine, source.affine, atol=1e-4)
    values = np.asarray(exported.dataobj)
    peak = np.array(np.unravel_index(values.argmax(), values.shape))
    core = values >= 0.5 * values.max()
    centroid = (np.argwhere(core) * values[core][:, None]).sum(0) / values[core].sum()
    found_world = (exported.affine @ np.array([*centroid, 1.0]))[:3]
    assert np.linalg.norm(found_world - expected_world) < 1.0  # mm; native voxels are 1.2 x 1.7 x 3.1 mm
    peak_world = (exported.affine @ np.array([*peak, 1.0]))[:3]
    assert np.linalg.norm(peak_world - expected_world) < np.linalg.norm(np.array([1.2, 1.7, 3.1]))

    label = nib.load(tmp_path / "out" / "case001" / LABEL_NAME)
    assert label.get_data_dtype() == np.uint8 and np.allclose(label.affine, source.affine, atol=1e-4)
    assert np.asarray(label.dataobj)[tuple(peak)] == 1
    cutoff = overlay_cutoff(blob.class_map)
    assert np.array_equal(np.asarray(label.dataobj), (values >= cutoff).astype(np.uint8))


def test_exports_copy_the_inputs_qform_and_sform_with_their_codes(case, tmp_path):
    item, transform, image, net, evidence = case  # input: qform code 1, sform code 2
    write_case_evidence(evidence, prototype_catalogue(net), image, transform, tmp_path / "out", figure=False)
    source = nib.load(item["image"][1])
    folder = tmp_path / "out" / "case001"
    names = [CLASS_MAP_NAME, LABEL_NAME, *json.loads((folder / REPORT_NAME).read_text())["files"]["prototype_maps"]]
    assert len(names) == 4  # class map, label, top-2 prototypes
    for name in names:
        header = nib.load(folder / name).header
        for form in ("get_qform", "get_sform"):
            affine, code = getattr(header, form)(coded=True)
            expected, expected_code = getattr(source.header, form)(coded=True)
            assert code == expected_code and np.allclose(affine, expected, atol=1e-4), (name, form)


def test_report_contributions_sum_to_the_logits_and_name_every_prototype(case, tmp_path):
    item, transform, image, net, evidence = case
    sharedness = torch.linspace(0, 1, 30)
    report = write_case_evidence(
        evidence, prototype_catalogue(net, sharedness), image, transform, tmp_path / "out", figure=False
    )
    assert report == json.loads((tmp_path / "out" / "case001" / REPORT_NAME).read_text())
    with torch.no_grad():
        logits = net(image.as_tensor()[None])[0]
    for c, name in enumerate(("LGG", "HGG")):
        total = sum(p["contributions"][name] for p in report["prototypes"])
        assert total == pytest.approx(report["logits"][name], abs=1e-5)
        assert report["logits"][name] == pytest.approx(float(logits[c]), abs=1e-5)
        for p in report["prototypes"]:
            assert p["contributions"][name] == pytest.approx(p["similarity"] * p["class_weights"][name], abs=1e-6)
    assert len(report["prototypes"]) == 30 and report["label"] == "HGG"
    assert report["prediction"] == ("LGG", "HGG")[int(logits.argmax())]
    assert sum(report["probabilities"].values()) == pytest.approx(1.0)
    assert [p["sharedness"] for p in report["prototypes"]] == pytest.approx(sharedness.tolist())
    assert set(report["prototypes"][0]["sequence_similarity_drop"]) == {"T1", "T1-CE", "T2", "FLAIR"}
    ranked = sorted((p for p in report["prototypes"] if p["top_rank"]), key=lambda p: p["top_rank"])
    assert [p["name"] for p in ranked] == report["top_prototypes"]


def test_reference_on_another_grid_raises_and_writes_nothing(case, tmp_path):
    item, transform, image, net, evidence = case
    source = nib.load(item["image"][1])
    shifted = source.affine.copy()
    shifted[:3, 3] += [4.0, 0.0, 0.0]  # the same grid moved by 4 mm
    moved = nib.Nifti1Image(np.zeros(source.shape, np.float32), shifted)
    with pytest.raises(ValueError, match="reference image has shape"):
        write_case_evidence(evidence, prototype_catalogue(net), image, transform, tmp_path / "out", moved, figure=False)
    assert not is_exported(tmp_path / "out", "case001")
    assert not (tmp_path / "out" / "case001").exists()


def test_a_crash_while_writing_leaves_no_case_folder_and_no_temporary_files(case, tmp_path, monkeypatch):
    item, transform, image, net, evidence = case
    calls = []

    def failing_save(img, filename):
        calls.append(filename)
        if len(calls) == 2:
            raise OSError("disk full")
        nib.save(img, filename)

    monkeypatch.setattr(evidence_writer.nib, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_case_evidence(evidence, prototype_catalogue(net), image, transform, tmp_path / "out", figure=False)
    assert len(calls) == 2
    assert list((tmp_path / "out").iterdir()) == []  # no case folder, no staging folder, no temporary file
    monkeypatch.undo()
    write_case_evidence(evidence, prototype_catalogue(net), image, transform, tmp_path / "out", figure=False)
    assert is_exported(tmp_path / "out", "case001")
    with pytest.raises(FileExistsError, match="overwrite"):
        write_case_evidence(evidence, prototype_catalogue(net), image, transform, tmp_path / "out", figure=False)


def test_subject_ids_that_are_not_folder_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="subject_id"):
        is_exported(tmp_path, "../escape")
