"""Metric handlers on a two-iteration Ignite engine: batch-dict and decollated outputs, default keys."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine
from monai.data import decollate_batch

from monai_protoshare.handlers.metric_handlers import (
    ActivationPrecision,
    BalancedAccuracy,
    ExpectedCalibrationError,
    IncrementalDeletion,
)
from monai_protoshare.metrics import (
    compute_activation_precision,
    compute_balanced_accuracy,
    compute_expected_calibration_error,
    compute_incremental_deletion,
)

N, SHAPE = 6, (4, 8, 8, 6)


def _data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(N, 1, *SHAPE[1:])
    mask[:, :, 2:6, 2:6, 1:4] = 1
    label = torch.tensor([1, 0, 1, 1, 0, 1])
    # tumour brightness: the class-0 case 1 is misread as class 1 until deletion dims it, so both curves move
    brightness = torch.tensor([1.0, 1.2, 1.4, 1.6, 0.0, 2.0]).view(N, 1, 1, 1, 1)
    return {
        "image": torch.rand(N, *SHAPE, generator=g) + brightness * mask,
        "label": label,
        "pred": torch.softmax(torch.randn(N, 2, generator=g), dim=1),
        "attribution": mask[:, :, ::2, ::2, ::2] + 0.3 * torch.rand(N, 1, 4, 4, 3, generator=g),
        "mask": mask,
    }


def predict(x: torch.Tensor) -> torch.Tensor:
    inside = x[:, 0, 2:6, 2:6, 1:4].mean(dim=(1, 2, 3))
    return torch.stack([torch.full_like(inside, 1.2), inside], dim=1)


def _run(handlers: dict, decollate: bool) -> Engine:
    data = _data()

    def step(engine, index):  # two iterations of 3 cases, output as an evaluator's state.output
        batch = {k: v[3 * index : 3 * index + 3] for k, v in data.items()}
        return decollate_batch(batch) if decollate else batch

    engine = Engine(step)
    for name, handler in handlers.items():
        handler.attach(engine, name)
    engine.run([0, 1], max_epochs=1)
    return engine


@pytest.mark.parametrize("decollate", [False, True])
def test_handlers_report_the_metrics_of_the_whole_epoch(decollate):
    handlers = {
        "bac": BalancedAccuracy(),
        "ece": ExpectedCalibrationError(n_bins=5),
        "ap": ActivationPrecision(),
        "ids": IncrementalDeletion(predict, steps=20, batch_size=4),
        "ids_bac": IncrementalDeletion(predict, steps=20, metric="balanced_accuracy", save_details=False),
    }
    engine = _run(handlers, decollate)
    data = _data()
    metrics = engine.state.metrics
    assert metrics["bac"] == pytest.approx(compute_balanced_accuracy(data["pred"], data["label"]))
    assert metrics["ece"] == pytest.approx(compute_expected_calibration_error(data["pred"], data["label"], 5))
    ap = compute_activation_precision(data["attribution"], data["mask"])
    assert metrics["ap"] == pytest.approx(ap.mean().item())
    assert torch.allclose(engine.state.metric_details["ap"], ap)
    ids, curve = compute_incremental_deletion(predict, data["image"], data["attribution"], data["label"], steps=20)
    ids_bac, _ = compute_incremental_deletion(
        predict, data["image"], data["attribution"], data["label"], steps=20, metric="balanced_accuracy"
    )
    assert 0 < ids < 100 and ids != ids_bac  # a non-trivial curve, so the comparison below can fail
    assert metrics["ids"] == pytest.approx(ids)
    assert metrics["ids_bac"] == pytest.approx(ids_bac)
    details = engine.state.metric_details["ids"]
    assert details["ids_bac"] == pytest.approx(ids_bac)
    assert torch.allclose(details["curve"], curve)
    assert "ids_bac" not in engine.state.metric_details


def test_custom_output_transform_and_bad_output_length():
    engine = _run({"bac": BalancedAccuracy(output_transform=lambda out: (out["pred"], out["label"]))}, False)
    data = _data()
    assert engine.state.metrics["bac"] == pytest.approx(compute_balanced_accuracy(data["pred"], data["label"]))
    with pytest.raises(ValueError, match=r"output must be \(image, attribution, label\), got 2 items"):
        _run({"ids": IncrementalDeletion(predict, output_transform=lambda out: (out["image"], out["label"]))}, False)
