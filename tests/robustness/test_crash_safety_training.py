"""SIGKILL during training, at chosen and random moments: the run resumes to the very same weights.

The bundle's training runs in child processes (:mod:`tests.robustness.kill_points`) killed during the push,
while a checkpoint is half written, at a random moment and while model.pt is half written; the resumed and
finished run's model.pt must equal an uninterrupted run's tensor for tensor (CPU, one thread, deterministic).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.transforms import RandGaussianNoised

from monai_protoshare.data.synthetic import generate_cohort
from monai_protoshare.engines import PrototypeTrainer, TrainingSchedule
from monai_protoshare.handlers.checkpoint import TrainingCheckpointHandler
from monai_protoshare.networks import build_network
from monai_protoshare.workflows.demo import DEFAULT_BUNDLES_DIR, bundle_workflow
from tests.toy_data import TINY_NET, ToyCases

from .conftest import TINY, record
from .kill_points import kill, run_to_end, run_to_pause, spawn, wait_for

#: the bundle tests' tiny settings, with stage 3 on cached push similarities (the cpu_small preset's choice):
#: 6 epochs = 2 warm-up, 2 stage-1, a push after epoch 4, 2 stage-3
TRAIN_OVERRIDES = {**TINY, "classifier_inputs": "cached"}


@pytest.fixture(scope="module")
def train_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten cases at 6 mm, half of each grade (the bundle tests' cohort)."""
    return generate_cohort(
        tmp_path_factory.mktemp("kill_cohort"), n_cases=10, seed=1, spacing=6.0, lgg_fraction=0.5, progress=False
    )


def _checkpoint_epoch(path: Path) -> int:
    """Last completed epoch recorded in a training checkpoint (Ignite saves the iteration)."""
    trainer = torch.load(path, weights_only=True)["trainer"]
    return int(trainer["iteration"]) // int(trainer["epoch_length"])


def toy_trainer(
    ckpt_dir: Path, schedule: TrainingSchedule, stop_after: int | None = None, **kwargs
) -> PrototypeTrainer:
    """A toy-data trainer with shuffled, augmented batches and checkpoints in ``ckpt_dir``; stops after ``stop_after``."""
    torch.manual_seed(123)  # the resumed run's initial weights are overwritten by the checkpoint
    items = [ToyCases(6)[i] for i in range(6)]
    loader = DataLoader(Dataset(items, RandGaussianNoised("image", prob=0.5, std=0.1)), batch_size=2, shuffle=True)
    network = build_network("um_protoshare", **TINY_NET)
    push_loader = DataLoader(Dataset(items), batch_size=3)
    trainer = PrototypeTrainer("cpu", network, loader, schedule, push_data_loader=push_loader, seed=7, **kwargs)
    TrainingCheckpointHandler(ckpt_dir).attach(trainer)
    if stop_after is not None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after), lambda engine: engine.terminate())
    return trainer


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _train_in_process(dataset_dir: Path, output_dir: Path) -> None:
    """The bundle's training, uninterrupted, with one thread like the child processes (bitwise comparable)."""
    torch.set_num_threads(1)
    values = {**TRAIN_OVERRIDES, "dataset_dir": str(dataset_dir), "output_dir": str(output_dir), "fold": 0}
    workflow = bundle_workflow(DEFAULT_BUNDLES_DIR / "um_protoshare", ["train.yaml"], **values)
    workflow.run()
    workflow.finalize()


def _hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


def test_training_killed_at_push_checkpoint_write_random_moment_and_model_write_resumes_to_the_same_weights(
    train_cohort, tmp_path, restore_threads
):
    overrides = json.dumps(TRAIN_OVERRIDES)
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    marker = tmp_path / "marker"
    _train_in_process(train_cohort, reference)

    checkpoint = resumed / "fold0" / "checkpoints" / "checkpoint.pt"
    arguments = ("train", str(train_cohort), str(resumed), str(marker))
    kills = []
    # the push after epoch 4: the prototypes are replaced in memory, the checkpoint of epoch 3 is the last on disk
    kills.append((run_to_pause(marker, *arguments, "push:4", overrides), _checkpoint_epoch(checkpoint)))
    # half of epoch 5's checkpoint written (epoch 5 is stage 3 on cached similarities: the resumed run must
    # recompute them, as the push that made them was in the killed run)
    kills.append((run_to_pause(marker, *arguments, "checkpoint:5", overrides), _checkpoint_epoch(checkpoint)))
    # a random moment of the remaining epochs
    epoch_file = Path(f"{marker}.epoch")
    epoch_file.unlink(missing_ok=True)
    process = spawn(*arguments, "", overrides)
    wait_for(process, epoch_file.exists, "the first epoch of the resumed run")
    time.sleep(random.Random(10).uniform(0.0, 1.5))
    ended = process.poll() is not None
    if not ended:
        kill(process)
    kills.append((f"random ({'finished first' if ended else 'killed'})", _checkpoint_epoch(checkpoint)))
    # half of model.pt written (the run had finished or resumes the last epochs)
    kills.append((run_to_pause(marker, *arguments, "model", overrides), _checkpoint_epoch(checkpoint)))
    run_to_end(*arguments, "", overrides)

    expected = torch.load(reference / "fold0" / "checkpoints" / "model.pt", weights_only=True)
    final = torch.load(resumed / "fold0" / "checkpoints" / "model.pt", weights_only=True)
    assert set(final) == set(expected)
    different = [key for key in expected if not torch.equal(final[key], expected[key])]
    assert not different, f"tensors differ after resuming: {different}"
    assert json.loads((resumed / "fold0" / "prototypes.json").read_text()) == json.loads(
        (reference / "fold0" / "prototypes.json").read_text()
    )
    assert [k[1] for k in kills[:2]] == [3, 4]  # the checkpoint on disk when each kill happened
    assert _hidden_leftovers(resumed / "fold0" / "checkpoints") == []  # no temporary file of a killed write
    record(
        "SIGKILL during training: " + "; ".join(f"{point} (checkpoint epoch {epoch})" for point, epoch in kills),
        "training (bundle, TrainingCheckpointHandler)",
        f"resumed and finished; all {len(expected)} tensors of model.pt equal to the uninterrupted run's",
    )


@pytest.mark.parametrize("stop_after", [2, 3])
def test_a_run_resumed_inside_stage_3_on_cached_similarities_matches_the_uninterrupted_run(
    tmp_path, stop_after, restore_threads
):
    """Resumed after the push epoch (2) or inside the stage-3 epochs (3) of the toy schedule (warm-up 1, latent 2
    with a push after each, stage 3 1): the resumed run recomputes the push's similarities, a pass that must not
    move the random generator the epoch's shuffling was seeded with."""
    torch.set_num_threads(1)  # restored by the fixture; two threads on two busy cores spin for seconds
    schedule = TrainingSchedule(warmup_epochs=1, latent_epochs=2, push_interval=1, classifier_epochs=2)
    reference = toy_trainer(tmp_path / "reference", schedule, classifier_inputs="cached")
    reference.run()
    toy_trainer(tmp_path / "resumed", schedule, stop_after, classifier_inputs="cached").run()
    resumed = toy_trainer(tmp_path / "resumed", schedule, classifier_inputs="cached")
    resumed.run()
    expected = reference.network.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in resumed.network.state_dict().items())
