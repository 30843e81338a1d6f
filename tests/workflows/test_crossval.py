import json

import pytest

from monai_protoshare.workflows.crossval import TABLE1_PLAN, describe_plan, parse_model_spec, parse_run, run_crossval
from monai_protoshare.workflows.options import BundleOptionError
from monai_protoshare.workflows.table1 import ROWS
from tests.bundles.conftest import BUNDLES_DIR, TINY


def test_model_specs():
    assert parse_model_spec("um_protoshare").run == "um_protoshare"
    assert parse_model_spec("um_protoshare:E2").run == "um_protoshare"
    c = parse_model_spec("um_protoshare:c")
    assert c.extra_configs == ("ablations/C.yaml",) and c.run == "um_protoshare_C"
    occlusion = parse_model_spec("cnn:occlusion")
    assert not occlusion.trains and occlusion.run_of_checkpoints == "cnn"
    with pytest.raises(ValueError, match="unknown model spec"):
        parse_model_spec("mprotonet:Z")


def test_runs_carry_their_folds_and_the_table1_plan_has_every_row():
    spec, folds = parse_run("mprotonet@0-4", [0])
    assert spec.run == "mprotonet" and folds == [0, 1, 2, 3, 4]
    assert parse_run("um_protoshare:C", [1, 2]) == (parse_model_spec("um_protoshare:C"), [1, 2])
    plan = {parse_run(text, [])[0].run: parse_run(text, [])[1] for text in TABLE1_PLAN}
    assert set(plan) == {row.run for row in ROWS}  # every row of the report, no other
    assert plan["um_protoshare"] == plan["mprotonet"] == [0, 1, 2, 3, 4]
    assert all(len(folds) >= 3 for folds in plan.values())


def test_cnn_with_both_attributions_on_two_folds_and_resume(bundle_cohort, tmp_path, monkeypatch):
    # tiny sizes through a preset file written next to a copy of the bundle
    import shutil

    bundles = tmp_path / "bundles"
    shutil.copytree(BUNDLES_DIR / "cnn", bundles / "cnn")
    tiny = {**TINY, "latent_epochs": 0, "spatial_size": [16, 16, 16]}  # occlusion windows are 11 voxels
    (bundles / "cnn" / "configs" / "presets" / "tiny.yaml").write_text(
        "\n".join(f"{k}: {json.dumps(v)}" for k, v in tiny.items()) + "\n"
    )
    out = tmp_path / "cv"
    table = run_crossval(
        str(bundle_cohort),
        ["cnn", "cnn:occlusion"],
        folds=[0, 1],
        preset="tiny",
        output_dir=str(out),
        bundles_dir=bundles,
        jobs=2,  # two worker processes; the occlusion rows wait for the CNN's trainings
    )
    text = table.read_text()
    assert "| CNN: Grad-CAM |" in text and "| CNN: Occlusion |" in text
    assert json.loads((out / "crossval_wall.json").read_text())["jobs"] == 2
    timing = json.loads((out / "cnn" / "fold1" / "timing.json").read_text())
    assert timing["train_s"] > 0 and timing["evaluate_s"] > 0
    occlusion_timing = json.loads((out / "cnn_occlusion" / "fold1" / "timing.json").read_text())
    assert occlusion_timing["train_s"] == 0 and occlusion_timing["evaluate_s"] > 0
    for run in ("cnn", "cnn_occlusion"):
        for fold in (0, 1):
            metrics = json.loads((out / run / f"fold{fold}" / "metrics.json").read_text())
            assert metrics["n"] == 2
    assert json.loads((out / "cnn_occlusion" / "fold0" / "metrics.json").read_text())["attribution"] == "occlusion"
    model = out / "cnn" / "fold0" / "checkpoints" / "model.pt"
    stamp = model.stat().st_mtime
    run_crossval(str(bundle_cohort), ["cnn"], folds=[0], preset="tiny", output_dir=str(out), bundles_dir=bundles)
    assert model.stat().st_mtime == stamp  # finished folds are not retrained
    plan = describe_plan(["cnn@1-2", "cnn:occlusion@2"], [0], "tiny", str(out), bundles)
    assert plan == [
        "cnn fold 1: done (re-evaluated only if its model is newer)",
        "cnn fold 2: train + evaluate",
        "cnn_occlusion fold 2: evaluate (cnn's checkpoint)",
    ]
    with pytest.raises(BundleOptionError, match="presets/huge.yaml"):
        describe_plan(["cnn"], [0], "huge", str(out), bundles)


def test_run_config_is_rebuilt_from_a_bundle_command_line(tmp_path):
    from monai_protoshare.workflows.run_info import config_from_argv

    train = str(BUNDLES_DIR / "um_protoshare" / "configs" / "train.yaml")
    preset = str(BUNDLES_DIR / "um_protoshare" / "configs" / "presets" / "cpu_small.yaml")
    argv = [
        "run",
        "--config_file",
        str([train, preset]),
        "--fold",
        "3",
        "--dataset_dir",
        "/data/x",
        "--bundle_root",
        ".",
    ]
    config = config_from_argv(argv)
    assert config["fold"] == 3 and config["dataset_dir"] == "/data/x" and config["spatial_size"] == [64, 64, 48]
    assert config_from_argv(["run"]) is None
