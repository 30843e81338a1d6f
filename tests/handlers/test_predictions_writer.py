import csv
import math

import torch
from ignite.engine import Engine

from monai_protoshare.handlers.predictions_writer import PredictionsWriter, write_predictions


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_evaluation_rows_hold_label_prediction_first_max_on_ties_and_empty_ap(tmp_path):
    path = write_predictions(
        tmp_path, ["a", "b"], [[0.2, 0.8], [0.5, 0.5]], ("LGG", "HGG"), labels=[0, 1], case_ap=[0.25, None]
    )
    assert path == tmp_path / "predictions.csv"
    assert _rows(path) == [
        ["subject_id", "label", "prediction", "prob_LGG", "prob_HGG", "ap"],
        ["a", "LGG", "HGG", "0.200000", "0.800000", "0.250000"],
        ["b", "HGG", "LGG", "0.500000", "0.500000", ""],
    ]


def test_inference_handler_writes_the_softmax_of_every_iteration_at_completion(tmp_path):
    batches = [{"subject_id": ["c1", "c2"]}, {"subject_id": ["c3"]}]
    logits = [torch.tensor([[0.0, math.log(3.0)], [2.0, 0.0]]), torch.tensor([[0.0, 0.0]])]

    engine = Engine(lambda e, batch: {"pred": logits[e.state.iteration - 1]})
    PredictionsWriter(tmp_path).attach(engine)
    engine.run(batches, max_epochs=1)
    engine.run(batches, max_epochs=1)  # a second run starts afresh
    e = math.exp(2.0)
    assert _rows(tmp_path / "predictions.csv") == [
        ["subject_id", "prediction", "prob_LGG", "prob_HGG"],
        ["c1", "HGG", "0.250000", "0.750000"],
        ["c2", "LGG", f"{e / (1 + e):.6f}", f"{1 / (1 + e):.6f}"],
        ["c3", "LGG", "0.500000", "0.500000"],
    ]
