"""``monai.bundle run ... --tracking configs/mlflow.yaml`` records parameters, losses and metrics in a local store."""

import json

import pytest
import yaml

from monai_protoshare.workflows.demo import bundle_workflow
from tests.bundles.conftest import BUNDLES_DIR, tiny_overrides

mlflow = pytest.importorskip("mlflow")

TRACKING_BUNDLES = sorted(p.parent.parent.name for p in BUNDLES_DIR.glob("*/configs/mlflow.yaml"))


def test_tracking_settings_are_the_same_in_every_bundle():
    reference = yaml.safe_load((BUNDLES_DIR / "um_protoshare" / "configs" / "mlflow.yaml").read_text())
    assert len(TRACKING_BUNDLES) >= 6
    for bundle in TRACKING_BUNDLES:
        assert yaml.safe_load((BUNDLES_DIR / bundle / "configs" / "mlflow.yaml").read_text()) == reference, bundle


def test_train_and_evaluate_record_parameters_losses_and_metrics(bundle_cohort, tmp_path):
    bundle = BUNDLES_DIR / "cnn"
    overrides = {**tiny_overrides("cnn"), "warmup_epochs": 1, "dataset_dir": str(bundle_cohort), "fold": 0}
    tracking = str(bundle / "configs" / "mlflow.yaml")
    for configs in (["train.yaml"], ["train.yaml", "evaluate.yaml"]):
        workflow = bundle_workflow(bundle, configs, output_dir=str(tmp_path), tracking=tracking, **overrides)
        workflow.run()
        workflow.finalize()

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cnn").experiment_id])
    train = next(r for r in runs if "batch_size" in r.data.params)
    evaluate = next(r for r in runs if r is not train)
    assert train.data.params["batch_size"] == "4" and train.data.params["warmup_epochs"] == "1"
    losses = client.get_metric_history(train.info.run_id, "loss")
    iterations = train.data.params["epoch_length"]
    assert len(losses) == int(iterations) and all(m.value > 0 for m in losses)  # one value an iteration
    assert "cls" in train.data.metrics  # every loss term, not only the total
    metrics = json.loads((tmp_path / "fold0" / "metrics.json").read_text())
    for key in ("bac", "ap", "ids", "ece"):
        assert evaluate.data.metrics[key] == pytest.approx(metrics[key])
