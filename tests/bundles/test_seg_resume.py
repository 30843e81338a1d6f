"""Checkpoints and validation of the segmentation bundles' training: the held-out fold's Dice is computed after every
epoch; a training interrupted after epoch 1 resumes from epoch 1 and ends with the uninterrupted run's weights, bit for
bit (CPU, one thread); the fold is not "finished" (no model.pt) until then."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events

from monai_protoshare.workflows.demo import bundle_workflow
from tests.bundles.conftest import BUNDLES_DIR
from tests.bundles.test_seg_bundles import MODEL, TINY_SEG


def _workflow(bundle: str, cohort, output_dir):
    overrides = {**TINY_SEG, **MODEL[bundle], "epochs": 3, "model_path": None}
    return bundle_workflow(
        BUNDLES_DIR / bundle, ["train.yaml"], **overrides, dataset_dir=str(cohort), output_dir=str(output_dir)
    )


def _mean_dice(workflow) -> float:
    """Mean over held-out cases of the mean over regions of Dice(σ(logit) > 0.5, mask) (regions without a voxel
    left out), 2|P ∩ T| / (|P| + |T|)."""
    network = workflow.parser.get_parsed_content("network").eval()
    cases = []
    with torch.no_grad():
        for batch in workflow.parser.get_parsed_content("validate#dataloader"):
            pred = (torch.sigmoid(network(batch["image"].as_tensor())) > 0.5).float()
            target = batch["seg"].as_tensor()
            regions = [2 * (p * t).sum() / (p.sum() + t.sum()) for p, t in zip(pred[0], target[0]) if t.any()]
            cases.append(float(sum(regions) / len(regions)))
    return sum(cases) / len(cases)


def _train(workflow) -> None:
    workflow.run()
    workflow.finalize()


@pytest.mark.parametrize(
    ("bundle", "checkpoint"), [("proto_seg", "training/checkpoint.pt"), ("segresnet", "checkpoint.pt")]
)
def test_interrupted_training_resumes_from_its_last_epoch(bundle, checkpoint, bundle_cohort, tmp_path):
    torch.set_num_threads(1)
    reference = tmp_path / "reference"
    workflow = _workflow(bundle, bundle_cohort, reference)
    workflow.parser.get_parsed_content("train#trainer")  # first, as the bundle does: it fixes the RNG's order of use
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    dice = []
    evaluator.add_event_handler(Events.COMPLETED, lambda engine: dice.append(engine.state.metrics["val_mean_dice"]))
    _train(workflow)
    assert len(dice) == 3  # the held-out fold's Dice after every epoch
    if bundle == "segresnet":  # no push: the last validation saw the final network
        assert dice[-1] == pytest.approx(_mean_dice(workflow), abs=1e-6)

    resumed = tmp_path / "resumed"
    workflow = _workflow(bundle, bundle_cohort, resumed)
    trainer = workflow.parser.get_parsed_content("train#trainer")

    @trainer.on(Events.ITERATION_STARTED(once=trainer.state.epoch_length + 1))  # epoch 2's first step: epoch 1 saved
    def interrupt(engine):
        raise KeyboardInterrupt("interrupted in epoch 2")

    with pytest.raises(KeyboardInterrupt):
        workflow.run()
    ckpt_dir = resumed / "fold0" / "checkpoints"
    state = torch.load(ckpt_dir / checkpoint, weights_only=True)
    assert state["trainer"]["iteration"] == state["trainer"]["epoch_length"]  # Ignite saves epoch 1 as its iterations
    assert {"network", "optimizer", "rng"} <= set(state)
    assert not (ckpt_dir / "model.pt").exists()  # crossval's rule: this fold is not finished, it is trained again

    workflow = _workflow(bundle, bundle_cohort, resumed)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    epochs_run = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: epochs_run.append(engine.state.epoch))
    _train(workflow)
    assert epochs_run == [2, 3]  # resumed after epoch 1
    expected = torch.load(reference / "fold0" / "checkpoints" / "model.pt", weights_only=True)
    final = torch.load(ckpt_dir / "model.pt", weights_only=True)
    assert set(final) == set(expected)
    assert [key for key in expected if not torch.equal(final[key], expected[key])] == []
    last = torch.load(ckpt_dir / checkpoint, weights_only=True)["trainer"]
    assert last["iteration"] == 3 * last["epoch_length"]
