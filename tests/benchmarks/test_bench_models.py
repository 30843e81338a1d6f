import json

import torch
from bench_models import ModelBench, main, stages_of, trainer_options

from monai_protoshare.losses import FPNIAIABLLoss, LatentSpaceLoss


def test_quick_run_times_every_stage_of_the_trainer_against_the_encoder(tmp_path):
    out = tmp_path / "models.json"
    assert main(["--quick", "--threads", "1", "--models", "um_protoshare_e2,cnn", "--output", str(out)]) == 0
    entry = json.loads(out.read_text())["tiny"]
    rows = {r["run"]: r for r in entry["rows"]}
    assert list(rows) == [
        "encoder[train]",
        "encoder[forward]",
        "um_protoshare_e2[warmup]",
        "um_protoshare_e2[latent]",
        "um_protoshare_e2[classifier]",
        "um_protoshare_e2[forward]",
        "cnn[warmup]",
        "cnn[forward]",
    ]
    assert rows["encoder[train]"]["t1"]["ratio"] == 1.0
    for name, row in rows.items():
        assert row["t1"]["median_s"] > 0 and row["mac"] > 0, name
        assert (
            row["t1"]["ratio"]
            == row["t1"]["median_s"]
            / rows["encoder[forward]" if name.endswith("[forward]") else "encoder[train]"]["t1"]["median_s"]
        )
    # stage 1 adds the mapping loss's recomputed maps and the backward to the forward; stage 3 is a forward + a
    # (B, 30) x (30, 2) classifier
    assert rows["um_protoshare_e2[latent]"]["mac"] > 2 * rows["um_protoshare_e2[forward]"]["mac"]
    assert rows["um_protoshare_e2[classifier]"]["mac"] < 1.01 * rows["um_protoshare_e2[forward]"]["mac"]


def test_trainer_options_are_the_bundles():
    e2 = trainer_options("um_protoshare_e2")  # an ablation: the um_protoshare bundle
    assert isinstance(e2["latent_loss"], LatentSpaceLoss) and e2["latent_loss"].weights["map"] == 0.5
    assert e2["classifier_loss"].lambda_l1 == 0.01 and e2["classifier_inputs"] == "augmented"
    assert isinstance(trainer_options("fpn_iaia_bl")["latent_loss"], FPNIAIABLLoss)
    assert stages_of("cnn") == ("warmup",) and stages_of("mprotonet") == ("warmup", "latent", "classifier")


def test_a_stage_1_step_trains_only_the_groups_of_stage_1():
    bench = ModelBench("um_protoshare_e2", "tiny")
    groups = bench.net.parameter_groups()
    before = {name: [p.detach().clone() for p in params] for name, params in groups.items()}
    bench.enter("latent")
    out = bench.step()
    assert set(out) >= {"loss", "cls", "clst", "sep", "map", "oc", "div"}
    for name, params in groups.items():
        changed = any(not torch.equal(a, b) for a, b in zip(before[name], params))
        assert changed == (name in ("encoder", "add_ons", "mapping", "prototypes")), name
