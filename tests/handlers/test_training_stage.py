import torch
from torch.utils.data import DataLoader

from monai_protoshare.engines import PrototypeTrainer, Stage, TrainingSchedule
from monai_protoshare.networks import build_network
from tests.toy_data import TINY_NET, ToyCases

EXPECTED = {
    Stage.WARMUP: {"encoder", "decoder", "add_ons", "warmup_head"},
    Stage.LATENT: {"encoder", "add_ons", "mapping", "prototypes"},
    Stage.CLASSIFIER: {"classifier"},
}


def _groups(trainer):
    groups = trainer.network.parameter_groups()
    groups["warmup_head"] = list(trainer.warmup_model.head.parameters())
    return groups


def test_each_stage_trains_exactly_its_groups():
    torch.manual_seed(0)
    net = build_network("um_protoshare", **TINY_NET)
    loader = DataLoader(ToyCases(4), batch_size=2)
    schedule = TrainingSchedule(warmup_epochs=1, latent_epochs=1, push_interval=1, classifier_epochs=1)
    trainer = PrototypeTrainer("cpu", net, loader, schedule, push_data_loader=loader)
    before = {k: [p.detach().clone() for p in v] for k, v in _groups(trainer).items()}
    seen = {}

    def check(engine):
        stage = engine.state.stage
        groups = _groups(engine)
        seen[stage] = {name for name, ps in groups.items() if any(p.requires_grad for p in ps)}
        # frozen modules keep their BN in eval mode during stage 1
        if stage == Stage.LATENT:
            assert not net.backbone.decoder.training and net.backbone.encoder.training
        if stage == Stage.CLASSIFIER:
            assert not net.training

    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_COMPLETED, check)
    trainer.run()
    assert seen == EXPECTED
    # every group changed in a stage that trains it (warm-up head and decoder only in warm-up)
    after = _groups(trainer)
    for name, params in after.items():
        if name == "prototypes":
            continue  # replaced by the push
        changed = any(not torch.equal(a, b) for a, b in zip(params, before[name]))
        assert changed, name


def test_decoder_frozen_in_latent_and_classifier_stages():
    torch.manual_seed(0)
    net = build_network("um_protoshare", **TINY_NET)
    loader = DataLoader(ToyCases(4), batch_size=2)
    schedule = TrainingSchedule(warmup_epochs=0, latent_epochs=2, push_interval=1, classifier_epochs=1)
    decoder_before = {k: v.clone() for k, v in net.backbone.decoder.state_dict().items()}
    classifier_before = net.classifier.weight.detach().clone()
    trainer = PrototypeTrainer("cpu", net, loader, schedule, push_data_loader=loader)
    from ignite.engine import Events

    @trainer.on(Events.EPOCH_COMPLETED)
    def classifier_fixed_in_latent(engine):
        if engine.state.stage == Stage.LATENT and engine.state.epoch == 1:
            assert torch.equal(net.classifier.weight, classifier_before)

    trainer.run()
    for k, v in net.backbone.decoder.state_dict().items():
        assert torch.equal(v, decoder_before[k]), k  # weights and BN statistics untouched
