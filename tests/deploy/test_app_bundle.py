"""deploy/app_bundle.py: the bundle folder the apps serve (no SDK needed: runs in the core suite too)."""

from __future__ import annotations

import pytest
import torch
import yaml
from app_bundle import make_app_bundle  # deploy/app_bundle.py (conftest puts deploy/ on sys.path)

from monai_protoshare.networks import build_network
from monai_protoshare.workflows.options import BundleOptionError, load_network_weights
from tests.deploy.conftest import TINY


def _weights(path, **sizes):
    torch.manual_seed(1)
    network = build_network("um_protoshare", **sizes)
    torch.save({"network": network.state_dict()}, path)  # a training checkpoint's layout
    return network


def test_preset_sizes_and_weights(tmp_path):
    sizes = {"encoder_layers": [1, 1], "encoder_widths": [16, 32], "embedding_dim": 32}  # cpu_small's
    network = _weights(tmp_path / "ckpt.pt", **sizes)
    out = make_app_bundle(tmp_path / "app_bundle", tmp_path / "ckpt.pt", preset="cpu_small")
    config = yaml.safe_load((out / "configs" / "inference.yaml").read_text(encoding="utf-8"))
    assert config["spatial_size"] == [64, 64, 48] and config["pixdim"] == 3.0
    assert {k: config[k] for k in sizes} == sizes
    assert "batch_size" not in config  # training keys of the preset stay out
    loaded = load_network_weights(build_network("um_protoshare", **sizes), out / "models" / "model.pt")
    for name, tensor in network.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert (out / "configs" / "metadata.json").is_file() and not (out / "outputs").exists()


def test_mismatched_preset_and_bad_options(tmp_path):
    tiny = {k: TINY[k] for k in ("encoder_layers", "encoder_widths", "embedding_dim")}
    _weights(tmp_path / "tiny.pt", **tiny)
    with pytest.raises(BundleOptionError, match="--weights"):
        make_app_bundle(tmp_path / "a", tmp_path / "tiny.pt", preset="cpu_small")
    assert not (tmp_path / "a").exists()
    with pytest.raises(FileNotFoundError, match="cpu_small"):
        make_app_bundle(tmp_path / "b", tmp_path / "tiny.pt", preset="cpu_smal")
    with pytest.raises(KeyError, match="batchsize"):
        make_app_bundle(tmp_path / "c", tmp_path / "tiny.pt", overrides={**TINY, "batchsize": 2})
    make_app_bundle(tmp_path / "d", tmp_path / "tiny.pt", overrides=TINY)
    with pytest.raises(FileExistsError, match="--out"):
        make_app_bundle(tmp_path / "d", tmp_path / "tiny.pt", overrides=TINY)
