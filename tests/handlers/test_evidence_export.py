import json
import os

import nibabel as nib
import numpy as np
import pytest
from ignite.engine import Engine
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator

from monai_protoshare.handlers.evidence_export import EvidenceExportHandler
from tests.explain.evidence_cases import image_transform, labelled_transform, tiny_network, write_case


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return [write_case(folder, f"case00{i}", label=i % 2, seed=i) for i in range(1, 4)]


def test_handler_in_a_monai_evaluator_writes_every_case_in_native_space_once(datalist, tmp_path):
    transform = labelled_transform()  # image, seg and the whole-tumour mask
    network = tiny_network()
    datalist = datalist[:2]  # one batch of two cases
    loader = DataLoader(Dataset(datalist, transform), batch_size=2)
    evaluator = SupervisedEvaluator(device="cpu", val_data_loader=loader, network=network)
    handler = EvidenceExportHandler(network, transform, tmp_path / "evidence", top_k=2, figure=False)
    handler.attach(evaluator)
    evaluator.run()

    assert handler.failures == {} and sorted(handler.written) == ["case001", "case002"]
    for item in datalist:
        folder = tmp_path / "evidence" / item["subject_id"]
        report = json.loads((folder / "report.json").read_text())
        assert report["label"] == ("LGG", "HGG")[item["label"]]
        assert 0.0 <= report["evidence_mass_in_tumour"] <= 1.0
        exported, source = nib.load(folder / "class_evidence.nii.gz"), nib.load(item["image"][1])
        assert exported.shape == source.shape and np.allclose(exported.affine, source.affine, atol=1e-4)
    stamp = os.stat(tmp_path / "evidence" / "case001" / "report.json").st_mtime_ns
    evaluator.run()  # a second evaluation skips the finished cases
    assert os.stat(tmp_path / "evidence" / "case001" / "report.json").st_mtime_ns == stamp


def test_a_failing_case_is_reported_and_the_engine_goes_on(datalist, tmp_path):
    transform = image_transform()
    items = [transform(dict(item)) for item in datalist]
    os.rename(datalist[1]["image"][0], datalist[1]["image"][0] + ".moved")  # case002's source file vanished
    try:
        engine = Engine(lambda engine, batch: None)  # state.batch stays the collated dict
        handler = EvidenceExportHandler(tiny_network(), transform, tmp_path / "evidence", top_k=1, figure=False)
        handler.attach(engine)
        engine.run(DataLoader(items, batch_size=2), max_epochs=1)
    finally:
        os.rename(datalist[1]["image"][0] + ".moved", datalist[1]["image"][0])
    assert engine.state.iteration == 2
    assert list(handler.failures) == ["case002"] and "FileNotFoundError" in handler.failures["case002"]
    assert sorted(handler.written) == ["case001", "case003"]
    assert sorted(p.name for p in (tmp_path / "evidence").iterdir()) == ["case001", "case003"]


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="PrototypeNetwork"):
        EvidenceExportHandler(object(), image_transform(), tmp_path)
    with pytest.raises(ValueError, match="Compose"):
        EvidenceExportHandler(tiny_network(), lambda x: x, tmp_path)
