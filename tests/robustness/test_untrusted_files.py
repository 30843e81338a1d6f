"""Untrusted files: no checkpoint can execute code, every torch.load is weights_only, the docs warn about configs."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest
import torch
from monai.handlers import CheckpointLoader

from monai_protoshare.handlers.checkpoint import TrainingCheckpointHandler
from monai_protoshare.networks import build_network
from monai_protoshare.networks.encoder import ResNetEncoder
from monai_protoshare.networks.pretrained import load_imagenet_resnet
from monai_protoshare.workflows import export_evidence
from monai_protoshare.workflows.options import BundleOptionError, load_network_weights
from tests.toy_data import TINY_NET

from .conftest import expect_failure, malicious_checkpoint, plain_pickle, project_files, record, truncate

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("monai_protoshare", "data_prep", "deploy", "benchmarks", "tests", "bundles")
COMPONENT = "checkpoint loading"


def _network():
    return build_network("um_protoshare", **TINY_NET)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "code_ran"


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    torch.save(_network().state_dict(), path)
    return path


def test_the_malicious_checkpoint_really_runs_code_without_weights_only(tmp_path, marker):
    """Control: the payload works, so the tests below would see it if a loader executed it."""
    torch.load(malicious_checkpoint(tmp_path / "evil.pt", marker), weights_only=False)  # unsafe-load: the control
    assert marker.exists()


@pytest.mark.parametrize("kind", ["torch file", "plain pickle"])
def test_a_checkpoint_with_code_is_refused_by_every_loader_and_never_runs(tmp_path, marker, kind):
    make = malicious_checkpoint if kind == "torch file" else plain_pickle
    evil = make(tmp_path / "evil.pt", marker)
    expect_failure(
        f"checkpoint with code ({kind}) as --ckpt_path",
        COMPONENT,
        BundleOptionError,
        r"--ckpt_path: cannot load '.*evil\.pt' as weights \(expected a state dict saved with torch.save.*\): Weights only load failed",
        load_network_weights,
        _network(),
        evil,
    )
    expect_failure(
        f"checkpoint with code ({kind}) as ImageNet weights",
        COMPONENT,
        ValueError,
        r"ImageNet ResNet weights file '.*evil\.pt' cannot be loaded as a state dict: .*Weights only load failed",
        load_imagenet_resnet,
        ResNetEncoder(layers=(1, 1), widths=(4, 8)),
        evil,
    )
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    evil.rename(checkpoints / "checkpoint.pt")
    handler = TrainingCheckpointHandler(checkpoints, {"network": _network(), "trainer": _network()})
    expect_failure(
        f"checkpoint with code ({kind}) as resume checkpoint.pt",
        COMPONENT,
        RuntimeError,
        r"cannot resume from '.*checkpoint\.pt': Weights only load failed.*Delete it to start the run afresh",
        handler.load,
        None,
    )
    assert not marker.exists()


def test_export_evidence_command_refuses_a_checkpoint_with_code(tmp_path, marker, capsys):
    evil = malicious_checkpoint(tmp_path / "evil.pt", marker)
    bundle = tmp_path / "bundle" / "configs"
    bundle.mkdir(parents=True)
    (bundle / "train.yaml").write_text(
        "model_name: um_protoshare\nnetwork_def:\n  _target_: monai_protoshare.networks.build_network\n"
        "  name: '@model_name'\n  encoder_layers: [1, 1]\n  encoder_widths: [4, 8]\n  embedding_dim: 8\n"
    )
    args = ["--bundle_root", str(tmp_path / "bundle"), "--checkpoint", str(evil), "--dataset_dir", str(tmp_path)]
    assert export_evidence.main(args) == 2 and not marker.exists()
    [line] = capsys.readouterr().err.splitlines()
    assert re.match(r"error: --checkpoint: cannot load '.*evil\.pt' as weights", line), line
    record("checkpoint with code, export_evidence --checkpoint", "evidence export (command line)", f"exit 2, {line}")


def test_truncated_foreign_and_non_torch_checkpoints_name_the_file(tmp_path, weights):
    expect_failure(
        "truncated checkpoint",
        COMPONENT,
        BundleOptionError,
        r"--ckpt_path: cannot load '.*model\.pt' as weights .*: .*(zip|archive|central directory)",
        load_network_weights,
        _network(),
        truncate(weights),
    )
    other = tmp_path / "cnn.pt"
    torch.save(build_network("cnn", **TINY_NET).state_dict(), other)
    expect_failure(
        "checkpoint of another model (CNN weights into UM-ProtoShare)",
        COMPONENT,
        BundleOptionError,
        r"--ckpt_path: '.*cnn\.pt' holds weights of another model or configuration than 'PrototypeNetwork' "
        r"\(\d+ tensors missing, \d+ unexpected\)",
        load_network_weights,
        _network(),
        other,
    )
    wider = tmp_path / "wider.pt"
    torch.save(build_network("um_protoshare", **{**TINY_NET, "embedding_dim": 16}).state_dict(), wider)
    expect_failure(
        "checkpoint of the same model, another configuration (E = 16 vs 8)",
        COMPONENT,
        BundleOptionError,
        r"'.*wider\.pt' holds weights of another model or configuration .*size mismatch",
        load_network_weights,
        _network(),
        wider,
    )
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights\n")
    expect_failure(
        "text file as checkpoint",
        COMPONENT,
        BundleOptionError,
        r"cannot load '.*notes\.pt' as weights",
        load_network_weights,
        _network(),
        text,
    )
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    expect_failure(
        "a bare tensor as checkpoint",
        COMPONENT,
        BundleOptionError,
        r"'.*tensor\.pt' does not hold a state dict",
        load_network_weights,
        _network(),
        tensor,
    )


# ------------------------------------------------------------------ every torch.load in the repository
def unsafe_torch_loads(source: str) -> list[int]:
    """Line numbers of ``torch.load(...)`` calls (or ``from torch import load``) without ``weights_only=True``;
    a call on a line marked ``unsafe-load`` (a test's control) is allowed."""
    text = source.splitlines()
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "torch" and any(a.name == "load" for a in node.names):
            lines.append(node.lineno)
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"):
            continue
        owner = node.func.value
        if not (isinstance(owner, ast.Name) and owner.id == "torch"):
            continue
        safe = any(
            k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
            for k in node.keywords
        )
        if not safe and "unsafe-load" not in text[node.lineno - 1]:
            lines.append(node.lineno)
    return lines


def test_the_scanner_finds_unsafe_loads():
    assert unsafe_torch_loads("import torch\ntorch.load(p)\ntorch.load(p, weights_only=False)\n") == [2, 3]
    assert unsafe_torch_loads("from torch import load\n") == [1]
    assert unsafe_torch_loads("torch.load(p, weights_only=False)  # unsafe-load: a control\n") == []
    assert unsafe_torch_loads("torch.load(p, map_location='cpu', weights_only=True)\nnp.load(p)\n") == []


def test_every_torch_load_in_the_repository_is_weights_only():
    files = project_files(SOURCE_DIRS, (".py",))
    assert len(files) > 100
    unsafe = {
        str(p.relative_to(REPO)): lines for p in files if (lines := unsafe_torch_loads(p.read_text(encoding="utf-8")))
    }
    assert unsafe == {}, f"torch.load without weights_only=True: {unsafe}"
    configs = project_files(("bundles",), (".yaml", ".yml", ".json"))
    expressions = [
        (p.name, line.strip())
        for p in configs
        for line in p.read_text(encoding="utf-8").splitlines()
        if re.search(r"torch\.load\(", line) and "weights_only=True" not in line
    ]
    assert expressions == []
    # The bundles' inference and evaluation load through MONAI's CheckpointLoader, which passes weights_only=True.
    assert "weights_only=True" in inspect.getsource(CheckpointLoader.__call__)


# ------------------------------------------------------------------ documentation
@pytest.mark.parametrize(
    "doc", ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "bundles").glob("*/docs/README.md"))]
)
def test_docs_say_configs_run_code_and_must_be_trusted(doc):
    text = " ".join((REPO / doc).read_text(encoding="utf-8").split())
    assert re.search(r"runs? Python( code)?", text) and re.search(r"trusted sources?", text), doc
