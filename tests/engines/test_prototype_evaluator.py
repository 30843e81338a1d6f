import csv
import json

import pytest
import torch
from torch.utils.data import DataLoader

from monai_protoshare.engines import PrototypeEvaluator
from monai_protoshare.explain.attribution import prototype_class_maps
from monai_protoshare.handlers import EvaluationReportHandler
from monai_protoshare.handlers.metric_handlers import ActivationPrecision, BalancedAccuracy, IncrementalDeletion
from monai_protoshare.metrics import compute_activation_precision
from monai_protoshare.networks import build_network
from tests.toy_data import TINY_NET, ToyCases


class MaskedCases(ToyCases):
    def __getitem__(self, i):
        item = super().__getitem__(i)
        seg = torch.zeros(1, 16, 16, 8)
        seg[:, 4:10, 4:10, 2:6] = 2.0
        seg[:, 6:8, 6:8, 3:5] = 4.0
        item.update(mask=(seg > 0).float(), seg=seg)
        return item


def _seeded(name):
    torch.manual_seed(0)
    return build_network(name, **TINY_NET)


def _evaluate(name, tmp_path, **kwargs):
    net = _seeded(name)
    evaluator = PrototypeEvaluator(
        "cpu", DataLoader(MaskedCases(5), batch_size=2), net, val_handlers=[EvaluationReportHandler(tmp_path)], **kwargs
    )
    BalancedAccuracy().attach(evaluator, "bac")
    ActivationPrecision().attach(evaluator, "ap")
    IncrementalDeletion(evaluator.predict, steps=10).attach(evaluator, "ids")
    evaluator.run()
    return json.loads((tmp_path / "metrics.json").read_text()), list(csv.DictReader(open(tmp_path / "predictions.csv")))


def test_prototype_network_evaluation_writes_metrics_predictions_and_checks(tmp_path):
    metrics, rows = _evaluate("um_protoshare", tmp_path)
    assert metrics["n"] == 5 and len(rows) == 5 and rows[0]["subject_id"] == "toy000"
    assert 0 <= metrics["bac"] <= 1 and 0 <= metrics["ap"] <= 1 and 0 <= metrics["ids"] <= 100
    assert len(metrics["ids_curve"]) == 11 and len(metrics["ids_peer_curve"]) == 11
    assert 0 <= metrics["ids_peer"] <= 100 and 0 <= metrics["ids_peer_bac"] <= 100
    assert len(metrics["ap_per_scale"]) == 3 and len(metrics["ap_per_prototype"]) == 30
    assert set(metrics["ap_subregions"]) == {"ncr_net", "ed", "et"}
    assert metrics["removal_error"] < 1e-5  # logits are exactly the linear read-out of similarities
    assert -1 <= metrics["randomisation_spearman"] <= 1
    probs = [float(rows[0]["prob_LGG"]), float(rows[0]["prob_HGG"])]
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert (tmp_path / "reliability.png").stat().st_size > 1000


def test_cnn_evaluation_uses_gradcam(tmp_path):
    metrics, rows = _evaluate("cnn", tmp_path, attribution_method="gradcam")
    assert metrics["n"] == 5 and "ap" in metrics and "ap_per_scale" not in metrics


def test_mask_of_another_shape_names_the_subjects(tmp_path):
    class Bad(MaskedCases):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            item["mask"] = torch.zeros(1, 8, 8, 8)
            return item

    net = build_network("um_protoshare", **TINY_NET)
    evaluator = PrototypeEvaluator("cpu", DataLoader(Bad(2), batch_size=2), net)
    with pytest.raises(ValueError, match="toy000"):
        evaluator.run()


def test_evaluator_moves_the_network_to_its_device():
    net = build_network("um_protoshare", **TINY_NET)
    PrototypeEvaluator("meta", DataLoader(MaskedCases(2), batch_size=2), net)
    assert {p.device.type for p in net.parameters()} == {"meta"}


@pytest.mark.parametrize(("name", "class_map"), [("um_protoshare", "eq28"), ("protopnet", "density")])
def test_metrics_hold_ap_under_every_class_map_convention_and_the_chosen_one_is_ap(tmp_path, name, class_map):
    metrics, _ = _evaluate(name, tmp_path, class_map=class_map, evidence_checks=False)
    assert set(metrics["ap_by_class_map"]) == {"density", "eq28", "eq12"}
    if name == "um_protoshare":  # the readings differ (3 scales; L1-normalised maps)
        assert len(set(metrics["ap_by_class_map"].values())) > 1, metrics["ap_by_class_map"]
    assert metrics["ap"] == pytest.approx(metrics["ap_by_class_map"][class_map])
    # recompute each convention's AP from a fresh forward of the evaluated network
    data = MaskedCases(5)
    images, labels = data.images, data.labels
    masks = torch.stack([data[i]["mask"] for i in range(5)])
    net = _seeded(name).eval()  # the evaluated network's weights
    with torch.no_grad():
        out = net.explain(images, online_cam=False)
    for convention, value in metrics["ap_by_class_map"].items():
        maps = prototype_class_maps(net, out, labels, (16, 16, 8), class_map=convention)
        assert value == pytest.approx(float(compute_activation_precision(maps, masks).mean()), abs=1e-6)
    if name == "protopnet":
        assert set(metrics["ap_by_protopnet_map"]) == {"topk", "similarity"}
        assert metrics["ap_by_protopnet_map"]["topk"] == pytest.approx(metrics["ap"])
    else:
        assert "ap_by_protopnet_map" not in metrics
