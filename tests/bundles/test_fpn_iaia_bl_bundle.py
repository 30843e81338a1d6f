"""The FPN-IAIA-BL bundle end to end on the tiny synthetic cohort: stages A/B/C, the push, evaluation, inference,
export; the fine-annotation override; the cross-validation specs and Table-1 rows of the new runs."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from ignite.engine import Events

from monai_protoshare.engines import Stage
from monai_protoshare.workflows.crossval import parse_model_spec
from monai_protoshare.workflows.demo import bundle_workflow
from monai_protoshare.workflows.options import fold_split, load_datalist
from monai_protoshare.workflows.table1 import render_markdown
from tests.bundles import test_bundle_export, test_bundle_files
from tests.bundles.conftest import BUNDLES_DIR, run_two_gloo_ranks, tiny_overrides

BUNDLE = "fpn_iaia_bl"
#: warm-up 2, stage A 2 (encoder frozen), push, last layer 2, stage C 2, push, last layer 2
SCHEDULE = {"latent_epochs": 4, "push_interval": 2, "stage_a_epochs": 2}


def _workflow(configs, tmp_path, cohort, **extra):
    overrides = {**tiny_overrides(BUNDLE), **SCHEDULE, "dataset_dir": str(cohort), "output_dir": str(tmp_path)}
    return bundle_workflow(BUNDLES_DIR / BUNDLE, configs, **{**overrides, **extra})


def _encoder_state(network):
    return {k: v.clone() for k, v in network.backbone.encoder.state_dict().items()}


def _changed(before, after):
    return any(not torch.equal(before[k], after[k]) for k in before)


def test_stages_push_and_evaluation(bundle_cohort, tmp_path):
    workflow = _workflow(["train.yaml"], tmp_path, bundle_cohort, fold=1)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    network = trainer.network
    seen = {}

    def record(engine, when):
        seen[(engine.state.epoch, when)] = (
            engine.state.stage,
            _encoder_state(network),
            [p.detach().clone() for p in network.add_ons.parameters()],
        )

    trainer.add_event_handler(Events.EPOCH_STARTED, record, "start")
    trainer.add_event_handler(Events.EPOCH_COMPLETED(event_filter=lambda e, n: True), record, "end")
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()
    stages = [seen[(e, "start")][0] for e in range(1, 11)]
    assert stages == [Stage.WARMUP] * 2 + ([Stage.LATENT] * 2 + [Stage.CLASSIFIER] * 2) * 2
    # stage A (epoch 3): the pyramid learns, the encoder (weights and BN statistics) stays; stage C (epoch 7): both
    # (the "end" snapshot of epoch 3 precedes the push; the push changes prototypes only)
    start, end = seen[(3, "start")], seen[(3, "end")]
    assert not _changed(start[1], end[1])
    assert any(not torch.equal(a, b) for a, b in zip(start[2], end[2]))
    assert _changed(seen[(7, "start")][1], seen[(7, "end")][1])

    # stage B: every prototype equals the feature of one voxel of its own level in a training case of its class
    network.eval()
    identity = network.prototype_class_identity
    best = [torch.full((k,), float("inf")) for k in network.prototypes_per_scale]
    sources = [[""] * k for k in network.prototypes_per_scale]
    with torch.no_grad():
        for batch in trainer.push_data_loader:
            out = network.explain(batch["image"])
            labels = torch.as_tensor(batch["label"]).view(-1)
            for i, (z, sl) in enumerate(zip(out.features, network.scale_slices())):
                p = network.prototypes.vectors[i]
                dist = (z.flatten(2).transpose(1, 2)[:, :, None] - p[None, None]).abs().amax(-1).amin(1)  # (B, K)
                dist[identity[labels][:, sl] == 0] = float("inf")
                value, case = dist.min(dim=0)
                for k in (value < best[i]).nonzero().flatten().tolist():
                    best[i][k], sources[i][k] = value[k], batch["subject_id"][int(case[k])]
    assert max(float(b.max()) for b in best) < 1e-5
    assert [s for level in sources for s in level] == network.prototypes.source_ids()
    provenance = json.loads((tmp_path / "fold1" / "prototypes.json").read_text())["prototypes"]
    assert len(provenance) == 30 and all(p["source_subject_id"] for p in provenance)

    evaluation = _workflow(["train.yaml", "evaluate.yaml"], tmp_path, bundle_cohort, fold=1)
    evaluation.run()
    evaluation.finalize()
    metrics = json.loads((tmp_path / "fold1" / "metrics.json").read_text())
    assert metrics["n"] == 2 and {"bac", "ap", "ids"} <= set(metrics) and metrics["model"] == BUNDLE

    sizes = ("spatial_size", "pixdim", "encoder_layers", "encoder_widths", "embedding_dim")
    out = tmp_path / "inference"
    cases = [{"image": i["image"], "subject_id": i["subject_id"]} for i in load_datalist(str(bundle_cohort))[:2]]
    (tmp_path / "cases.json").write_text(json.dumps({"testing": cases}))
    inference = bundle_workflow(
        BUNDLES_DIR / BUNDLE,
        ["inference.yaml"],
        "infer",
        **{k: tiny_overrides(BUNDLE)[k] for k in sizes},
        dataset_dir=str(tmp_path / "cases.json"),
        output_dir=str(out),
        model_path=str(tmp_path / "fold1" / "checkpoints" / "model.pt"),
        num_workers=0,
        top_k=2,
    )
    assert inference.check_properties() == []
    inference.run()
    inference.finalize()
    assert len(sorted((out / "evidence").glob("*/report.json"))) == 2


def test_fine_override_trains_with_masks_and_names_a_case_without_segmentation(bundle_cohort, tmp_path):
    workflow = _workflow(["train.yaml", "ablations/fine.yaml"], tmp_path, bundle_cohort, fold=0, latent_epochs=2)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    fine = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: fine.append(e.state.output.get("fine", 0.0)))
    assert trainer.latent_loss.weights["fine"] == 0.001
    workflow.run()
    assert any(v > 0 for v in fine)  # stage-A/C iterations computed the fine term from the augmented masks

    items = load_datalist(str(bundle_cohort))
    for item in items[3:]:
        item["seg"] = None
    first = next(i["subject_id"] for i in fold_split(items, 0, 5, 0)[0] if i["seg"] is None)
    broken = _workflow(["train.yaml", "ablations/fine.yaml"], tmp_path / "broken", bundle_cohort, datalist=items)
    with pytest.raises(RuntimeError) as err:  # MONAI wraps the error of a config expression
        broken.parser.get_parsed_content("train#dataset")
    cause = err.value
    while cause.__cause__ is not None:
        cause = cause.__cause__
    assert isinstance(cause, ValueError) and f"{first!r} has none" in str(cause)


@pytest.mark.parametrize("bundle", ["um_protoshare", "mprotonet", "fpn_iaia_bl"])
def test_fine_override_configures_the_loss(bundle, bundle_cohort, tmp_path):
    overrides = {**tiny_overrides(bundle), "cache_rate": 0.0}
    workflow = bundle_workflow(
        BUNDLES_DIR / bundle,
        ["train.yaml", "ablations/fine.yaml"],
        output_dir=str(tmp_path),
        dataset_dir=str(bundle_cohort),
        **overrides,
    )
    loss = workflow.parser.get_parsed_content("train#latent_loss")
    assert loss.weights["fine"] == 0.001
    assert loss.fine_annotation.tables(2)[1].tolist() == [[0.0, 1.0], [1.0, 0.0]]
    item = workflow.parser.get_parsed_content("train#dataset")[0]
    assert set(item) >= {"image", "mask", "seg"} and item["mask"].shape[1:] == item["image"].shape[1:]


#: the per-bundle export tests (TorchScript script and trace, ONNX, verify_net_in_out) and file checks of every
#: bundle: the functions of those modules that take a ``bundle`` (and at most ``tmp_path``)
SHARED_TESTS = [
    f
    for module in (test_bundle_export, test_bundle_files)
    for name, f in vars(module).items()
    if name.startswith("test_")
    and "bundle" in inspect.signature(f).parameters
    and set(inspect.signature(f).parameters) <= {"bundle", "tmp_path"}
]


@pytest.mark.parametrize("shared_test", SHARED_TESTS, ids=lambda f: f.__name__)
def test_exports_and_files_like_every_bundle(shared_test, tmp_path):
    arguments = {"bundle": BUNDLE, "tmp_path": tmp_path}
    shared_test(**{k: v for k, v in arguments.items() if k in inspect.signature(shared_test).parameters})


def test_crossval_specs_and_table_rows():
    assert parse_model_spec("fpn_iaia_bl").run == "fpn_iaia_bl"
    for bundle in ("um_protoshare", "mprotonet", "fpn_iaia_bl"):
        spec = parse_model_spec(f"{bundle}:fine")
        assert (spec.bundle, spec.extra_configs, spec.run) == (bundle, ("ablations/fine.yaml",), f"{bundle}_fine")
        assert (BUNDLES_DIR / bundle / "configs" / "ablations" / "fine.yaml").is_file()
    gradcampp = parse_model_spec("cnn:gradcampp")
    assert (gradcampp.trains, gradcampp.run_of_checkpoints, gradcampp.eval_configs) == (
        False,
        "cnn",
        ("gradcampp.yaml",),
    )
    assert (BUNDLES_DIR / "cnn" / "configs" / "gradcampp.yaml").is_file()
    with pytest.raises(ValueError, match="unknown model spec"):
        parse_model_spec("protopnet:fine")
    fold = {"bac": 0.8, "ap": 0.5, "ids": 10.0}
    text = render_markdown({run: [fold] for run in ("fpn_iaia_bl", "mprotonet_fine", "cnn_gradcampp")})
    assert "| FPN-IAIA-BL | – |" in text and "| CNN: Grad-CAM++ |" in text
    assert "| MProtoNet | fine | fine-annotation loss; uses masks in training |" in text


@pytest.mark.slow
def test_two_process_gloo_training_keeps_the_ranks_identical_through_stages_a_and_c(bundle_cohort, tmp_path):
    """multi_gpu_train.yaml with two gloo processes through stage A (encoder frozen) and stage C (encoder trained):
    both ranks end with the same parameters (prototypes, pyramid, encoder, last layer)."""
    root = BUNDLES_DIR / BUNDLE
    overrides = {**tiny_overrides(BUNDLE), **SCHEDULE, "dataset_dir": str(bundle_cohort), "output_dir": str(tmp_path)}
    # each rank saves its trained parameters; the bundle's own `finalize` ends the run
    save = "torch.save({k: v.detach() for k, v in @network.named_parameters()}, os.path.join(@fold_dir, f'rank{dist.get_rank()}.pt'))"
    result = run_two_gloo_ranks(root, overrides, ("run#0", f"$[@train#trainer.run(), {save}]"))
    assert result.returncode == 0, result.stderr[-4000:]
    rank0 = torch.load(tmp_path / "fold0" / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "fold0" / "rank1.pt", weights_only=True)
    for key in rank0:  # the parameters (BN running statistics are per rank, as in every bundle)
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=1e-6, msg=key)
