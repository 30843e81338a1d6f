import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.transforms import RandGaussianNoised

from monai_protoshare.engines import PrototypeTrainer, TrainingSchedule
from monai_protoshare.handlers.checkpoint import TrainingCheckpointHandler
from monai_protoshare.networks import build_network
from tests.toy_data import TINY_NET, ToyCases

SCHEDULE = TrainingSchedule(warmup_epochs=1, latent_epochs=2, push_interval=1, classifier_epochs=1)


def _trainer(ckpt_dir, stop_after=None, n=6, classifier_inputs="augmented"):
    torch.manual_seed(123)  # a different init than the run being resumed would need is fine: it is overwritten
    net = build_network("um_protoshare", **TINY_NET)
    items = [ToyCases(n)[i] for i in range(n)]
    train = Dataset(items, transform=RandGaussianNoised("image", prob=0.5, std=0.1))
    loader = DataLoader(train, batch_size=2, shuffle=True, num_workers=0)
    push_loader = DataLoader(Dataset(items), batch_size=3)
    trainer = PrototypeTrainer(
        "cpu", net, loader, SCHEDULE, push_data_loader=push_loader, seed=7, classifier_inputs=classifier_inputs
    )
    TrainingCheckpointHandler(ckpt_dir).attach(trainer)
    if stop_after is not None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after), lambda e: e.terminate())
    return trainer


# stop mid stage 1, right after the first push (the next epoch is stage 3), and with cached stage-3 inputs
@pytest.mark.parametrize("stop_after,inputs", [(2, "augmented"), (3, "augmented"), (3, "cached")])
def test_killed_run_resumes_to_the_same_weights(tmp_path, stop_after, inputs):
    reference = _trainer(tmp_path / "reference", classifier_inputs=inputs)
    reference.run()
    interrupted = _trainer(tmp_path / "resumed", stop_after=stop_after, classifier_inputs=inputs)
    interrupted.run()
    assert interrupted.state.epoch == stop_after
    resumed = _trainer(tmp_path / "resumed", classifier_inputs=inputs)
    resumed.run()
    assert resumed.state.epoch == SCHEDULE.total_epochs
    expected = reference.network.state_dict()
    for key, value in resumed.network.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)
    # the final model file holds the network alone and loads without unpickling code
    model = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)
    assert set(model) == set(expected)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    _trainer(tmp_path, stop_after=1).run()
    net = build_network("um_protoshare_b", **TINY_NET)
    loader = DataLoader(Dataset([ToyCases(2)[i] for i in range(2)]), batch_size=2)
    trainer = PrototypeTrainer("cpu", net, loader, SCHEDULE, push_data_loader=loader)
    TrainingCheckpointHandler(tmp_path, trainer.checkpoint_objects()).attach(trainer)
    with pytest.raises(RuntimeError, match="does not fit this run's 'network'"):
        trainer.run()


def test_loss_falls_and_training_learns_the_toy_task():
    torch.manual_seed(0)
    net = build_network("um_protoshare", **TINY_NET)
    data = ToyCases(16)
    loader = DataLoader(data, batch_size=4, shuffle=True)
    schedule = TrainingSchedule(warmup_epochs=6, latent_epochs=6, push_interval=3, classifier_epochs=3)
    trainer = PrototypeTrainer("cpu", net, loader, schedule, push_data_loader=DataLoader(data, batch_size=8))
    losses = {}
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: losses.setdefault((e.state.stage.value, e.state.epoch), []).append(e.state.output["loss"]),
    )
    trainer.run()
    warmup = [sum(v) / len(v) for (stage, _), v in sorted(losses.items(), key=lambda kv: kv[0][1]) if stage == "warmup"]
    latent = [sum(v) / len(v) for (stage, _), v in sorted(losses.items(), key=lambda kv: kv[0][1]) if stage == "latent"]
    assert warmup[-1] < warmup[0] and latent[-1] < latent[0]
    net.eval()
    with torch.no_grad():
        predicted = net(data.images).argmax(1)
    assert (predicted == data.labels).float().mean() >= 0.9


def test_cached_stage3_trains_the_classifier_without_a_forward_pass(tmp_path):
    trainer = _trainer(tmp_path, classifier_inputs="cached")
    network = trainer.network
    calls = {"stage3": 0}
    original = network.explain

    def counting(*args, **kwargs):
        if trainer.state.stage is not None and trainer.state.stage.value == "classifier":
            calls["stage3"] += 1
        return original(*args, **kwargs)

    network.explain = counting
    weights = []
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: weights.append(network.classifier.weight.detach().clone())
    )
    trainer.run()
    assert calls["stage3"] == 0
    assert not torch.equal(weights[2], weights[1])  # epoch 3 (stage 3) changed the classifier


@pytest.mark.parametrize("factor", [1.0, 10.0])
def test_mask_shift_lr_factor_scales_the_first_adam_step_of_the_map_shifts(factor):
    torch.manual_seed(0)
    net = build_network("um_protoshare", **TINY_NET)
    data = ToyCases(4)
    loader = DataLoader(data, batch_size=4)
    trainer = PrototypeTrainer("cpu", net, loader, SCHEDULE, push_data_loader=loader, mask_shift_lr_factor=factor)
    optimizer = trainer.latent_optimizer
    shifts = net.mask_shift_parameters()
    assert len(shifts) == 3 and all(s is head.bn2.bias for s, head in zip(shifts, net.mapping_heads, strict=True))
    listed = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(listed) == len(set(listed))  # no parameter is optimised twice, and none is left out
    groups = net.parameter_groups()
    assert set(listed) == {id(p) for k in ("encoder", "add_ons", "mapping", "prototypes") for p in groups[k]}
    (group,) = [g for g in optimizer.param_groups if any(p is shifts[0] for p in g["params"])]
    base_lr = optimizer.param_groups[0]["lr"]
    assert group["lr"] == pytest.approx(factor * base_lr)
    before = [s.detach().clone() for s in shifts]
    output = net.explain(data.images)
    loss = torch.nn.functional.cross_entropy(output.logits, data.labels) + sum(m.mean() for m in output.masks)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    # Adam's first step moves each parameter by its learning rate (the initial shifts are 0: no decay term)
    for shift, old in zip(shifts, before, strict=True):
        moved = (shift.detach() - old).abs()[shift.grad.abs() > 1e-6]
        assert moved.numel() > 0
        torch.testing.assert_close(moved, torch.full_like(moved, factor * base_lr), rtol=1e-3, atol=0)


def test_mask_shift_lr_factor_must_be_positive():
    net = build_network("um_protoshare", **TINY_NET)
    loader = DataLoader(ToyCases(2), batch_size=2)
    with pytest.raises(ValueError, match="mask_shift_lr_factor"):
        PrototypeTrainer("cpu", net, loader, SCHEDULE, push_data_loader=loader, mask_shift_lr_factor=0.0)


def test_trainer_moves_the_network_and_its_warmup_head_to_its_device():
    """The warm-up GAP head is built inside the trainer, so a bundle's ``network.to(device)`` cannot move it (this
    failed on CUDA); the meta device shows the move without a GPU."""
    net = build_network("um_protoshare", **TINY_NET)
    loader = DataLoader(Dataset([ToyCases(2)[i] for i in range(2)]), batch_size=2)
    trainer = PrototypeTrainer("meta", net, loader, SCHEDULE, push_data_loader=loader)
    assert {p.device.type for p in trainer.warmup_model.parameters()} == {"meta"}
    assert {p.device.type for p in net.parameters()} == {"meta"}


def test_iteration_events_and_push_result_in_state(tmp_path):
    """Handlers react to the trainer: MONAI's IterationEvents in every step (as SupervisedTrainer), the push in state."""
    from monai.engines.utils import IterationEvents

    trainer = _trainer(tmp_path, classifier_inputs="cached")
    fired = []
    for event in (
        IterationEvents.FORWARD_COMPLETED,
        IterationEvents.LOSS_COMPLETED,
        IterationEvents.BACKWARD_COMPLETED,
        IterationEvents.MODEL_COMPLETED,
    ):
        trainer.add_event_handler(event, lambda e, name=event.name: fired.append((name, sorted(e.state.output))))
    trainer.run()
    steps = SCHEDULE.total_epochs * 3  # 6 cases in batches of 2
    assert len(fired) == 4 * steps
    assert fired[:4] == [
        ("FORWARD_COMPLETED", ["label", "pred"]),
        ("LOSS_COMPLETED", ["label", "loss", "pred"]),
        ("BACKWARD_COMPLETED", ["label", "loss", "pred"]),
        ("MODEL_COMPLETED", ["label", "loss", "pred"]),
    ]
    result = trainer.state.push_result
    assert result.num_cases == 6 and len(result.subject_ids) == trainer.network.prototypes.num_prototypes
    assert trainer.classifier_cache[0] is result.similarities
