"""Encoder initialisation from local files (App. A.1): inflated torchvision 2D ResNet and MedicalNet 3D ResNet.

torchvision is not a dependency: the 2D state dicts are built by hand with torchvision's key names.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser

from monai_protoshare.networks import (
    ResNetEncoder,
    build_network,
    inflate_resnet2d_state_dict,
    load_imagenet_resnet,
    load_medicalnet_resnet,
)
from monai_protoshare.networks.pretrained import imagenet_weights_file, medicalnet_state_dict
from tests.bundles.conftest import BUNDLES_DIR

LAYERS, WIDTHS = (1, 1), (16, 32)


def _bottleneck_resnet_state_dict(
    spatial: int, in_channels: int, prefix: str = "", layers=LAYERS, widths=WIDTHS
) -> dict[str, torch.Tensor]:
    """A torchvision-style bottleneck ResNet state dict with LAYERS/WIDTHS, random values.

    ``spatial`` = 2 gives torchvision's (O, I, kh, kw) kernels, 3 gives MedicalNet's (O, I, kd, kh, kw);
    non-cubic kernel sizes cannot occur, so kernels are random to make every axis distinguishable.
    """
    g = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}

    def conv(key: str, out_ch: int, in_ch: int, k: int) -> None:
        sd[f"{prefix}{key}.weight"] = torch.randn(out_ch, in_ch, *([k] * spatial), generator=g)

    def bn(key: str, ch: int) -> None:
        sd[f"{prefix}{key}.weight"] = torch.rand(ch, generator=g) + 0.5
        sd[f"{prefix}{key}.bias"] = torch.randn(ch, generator=g)
        sd[f"{prefix}{key}.running_mean"] = torch.randn(ch, generator=g)
        sd[f"{prefix}{key}.running_var"] = torch.rand(ch, generator=g) + 0.5
        sd[f"{prefix}{key}.num_batches_tracked"] = torch.tensor(12345)

    conv("conv1", widths[0], in_channels, 7)
    bn("bn1", widths[0])
    in_planes = widths[0]
    for stage, (blocks, width) in enumerate(zip(layers, widths, strict=True), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            conv(f"{p}.conv1", width, in_planes, 1)
            bn(f"{p}.bn1", width)
            conv(f"{p}.conv2", width, width, 3)
            bn(f"{p}.bn2", width)
            conv(f"{p}.conv3", 4 * width, width, 1)
            bn(f"{p}.bn3", 4 * width)
            if b == 0:
                conv(f"{p}.downsample.0", 4 * width, in_planes, 1)
                bn(f"{p}.downsample.1", 4 * width)
            in_planes = 4 * width
    # stages the truncated encoder does not have
    conv("layer3.0.conv1", 64, in_planes, 1)
    sd[f"{prefix}fc.weight"] = torch.randn(1000, 8, generator=g)
    sd[f"{prefix}fc.bias"] = torch.randn(1000, generator=g)
    return sd


def _encoder() -> ResNetEncoder:
    return ResNetEncoder(layers=LAYERS, widths=WIDTHS)


# ---------------------------------------------------------------- ImageNet (2D -> 3D inflation)


def test_inflation_of_every_tensor():
    sd2d = _bottleneck_resnet_state_dict(spatial=2, in_channels=3)
    encoder = _encoder()
    inflated = inflate_resnet2d_state_dict(sd2d, encoder)
    assert set(inflated) == set(encoder.state_dict())
    n_conv = 0
    for key, tensor in inflated.items():
        src = sd2d[key]
        if src.ndim != 4:  # BN weights, biases, running statistics, num_batches_tracked: copied
            assert torch.equal(tensor, src), key
            continue
        n_conv += 1
        depth = src.shape[-1]  # square 2D kernels give cubic 3D kernels: 7, 3 or 1
        assert tensor.shape[2:] == (depth, depth, depth), key
        rgb = tensor[:, :3] if key == "conv1.weight" else tensor
        for d in range(depth):  # repeated along the last (depth) axis, divided by the depth
            torch.testing.assert_close(rgb[..., d], src / depth, rtol=0, atol=1e-7)
        if key == "conv1.weight":  # 4th input channel = mean of the RGB channels
            assert tensor.shape[1] == 4
            torch.testing.assert_close(tensor[:, 3], rgb.mean(dim=1), rtol=0, atol=1e-7)
            torch.testing.assert_close(tensor[:, 3, ..., 0], src.mean(dim=1) / 7, rtol=0, atol=1e-7)
    assert n_conv == 1 + 4 + 4  # conv1 + (3 convs + downsample) per stage


def test_inflated_conv1_reproduces_the_2d_response_on_a_volume_constant_in_depth():
    sd2d = _bottleneck_resnet_state_dict(spatial=2, in_channels=3)
    encoder = _encoder()
    encoder.load_state_dict(inflate_resnet2d_state_dict(sd2d, encoder))
    image = torch.randn(1, 3, 16, 16)
    volume = torch.cat([image, torch.zeros(1, 1, 16, 16)], dim=1).unsqueeze(-1).expand(-1, -1, -1, -1, 14)
    with torch.no_grad():
        out3d = encoder.conv1(volume.contiguous())
    out2d = F.conv2d(image, sd2d["conv1.weight"], stride=2, padding=3)
    for z in range(2, 6):  # output depths whose 7-voxel window lies inside the volume
        torch.testing.assert_close(out3d[..., z], out2d, rtol=1e-4, atol=1e-4)


def test_load_imagenet_resnet_from_a_local_file(tmp_path):
    sd2d = _bottleneck_resnet_state_dict(spatial=2, in_channels=3)
    torch.save(sd2d, tmp_path / "resnet152.pth")
    torch.save({"state_dict": sd2d}, tmp_path / "wrapped.pth")
    expected = inflate_resnet2d_state_dict(sd2d, _encoder())
    encoder = load_imagenet_resnet(_encoder(), tmp_path / "wrapped.pth")
    assert all(torch.equal(v, expected[k]) for k, v in encoder.state_dict().items())
    net = build_network(
        "um_protoshare_e2",
        pretrained="imagenet",
        pretrained_path=tmp_path / "resnet152.pth",
        encoder_layers=LAYERS,
        encoder_widths=WIDTHS,
        embedding_dim=32,
    )
    assert torch.equal(net.backbone.encoder.layer2[0].conv2.weight, expected["layer2.0.conv2.weight"])


def test_wrong_width_state_dict_is_a_clear_error():
    sd2d = _bottleneck_resnet_state_dict(spatial=2, in_channels=3)
    with pytest.raises(
        ValueError, match=r"cannot inflate 'conv1.weight'.*expects \(8, 4, 7, 7, 7\).*\(16, 4, 7, 7, 7\)"
    ):
        inflate_resnet2d_state_dict(sd2d, ResNetEncoder(layers=LAYERS, widths=(8, 16)))


def test_missing_tensor_is_a_key_error_naming_it():
    sd2d = _bottleneck_resnet_state_dict(spatial=2, in_channels=3)
    del sd2d["layer2.0.bn3.running_var"]
    with pytest.raises(KeyError, match="layer2.0.bn3.running_var"):
        inflate_resnet2d_state_dict(sd2d, _encoder())
    with pytest.raises(KeyError, match="layer1.1"):  # a deeper encoder than the weights
        inflate_resnet2d_state_dict(_bottleneck_resnet_state_dict(2, 3), ResNetEncoder(layers=(2, 1), widths=WIDTHS))


def test_missing_or_invalid_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no download"):
        load_imagenet_resnet(_encoder(), tmp_path / "absent.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        load_medicalnet_resnet(_encoder(), tmp_path / "list.pth")


def _fake_torchvision_cache(monkeypatch, tmp_path, **sizes) -> dict[str, torch.Tensor]:
    """A tiny fake ResNet state dict where torchvision caches resnet152 (TORCH_HOME=tmp_path); nothing downloaded."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    sd2d = _bottleneck_resnet_state_dict(spatial=2, in_channels=3, **sizes)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(sd2d, tmp_path / "hub" / "checkpoints" / "resnet152-f82ba261.pth")
    return sd2d


def test_imagenet_start_reads_torchvisions_cache_without_a_path(monkeypatch, tmp_path):
    sd2d = _fake_torchvision_cache(monkeypatch, tmp_path)
    assert imagenet_weights_file() == tmp_path / "hub" / "checkpoints" / "resnet152-f82ba261.pth"
    net = build_network(
        "mprotonet", pretrained="imagenet", encoder_layers=LAYERS, encoder_widths=WIDTHS, embedding_dim=32
    )
    expected = inflate_resnet2d_state_dict(sd2d, _encoder())
    assert all(torch.equal(v, expected[k]) for k, v in net.backbone.encoder.state_dict().items())


def test_imagenet_start_offline_without_the_file_names_the_option_and_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = str(tmp_path / "hub" / "checkpoints" / "resnet152-*.pth")
    with pytest.raises(FileNotFoundError, match=rf"(?s){re.escape(cache)}.*pretrained_path.*random"):
        build_network("um_protoshare", pretrained="imagenet", encoder_layers=LAYERS, encoder_widths=WIDTHS)
    with pytest.raises(FileNotFoundError, match=r"pretrained_path.*absent\.pth"):
        build_network("cnn", pretrained="imagenet", pretrained_path=tmp_path / "absent.pth")


def test_maprotonet_attention_keeps_its_initialisation_when_inflated(monkeypatch, tmp_path):
    sd2d = _fake_torchvision_cache(monkeypatch, tmp_path, layers=(1,), widths=(16,))
    torch.manual_seed(0)
    reference = build_network("maprotonet", encoder_layers=(1,), encoder_widths=(16,), embedding_dim=32)
    torch.manual_seed(0)
    net = build_network(
        "maprotonet", pretrained="imagenet", encoder_layers=(1,), encoder_widths=(16,), embedding_dim=32
    )
    state, initial = net.backbone.encoder.state_dict(), reference.backbone.encoder.state_dict()
    attention = [k for k in state if ".attention." in k]
    assert attention and all(torch.equal(state[k], initial[k]) for k in attention)
    assert torch.equal(state["layer1.0.bn2.running_var"], sd2d["layer1.0.bn2.running_var"])


@pytest.mark.parametrize("bundle", ["um_protoshare", "protopnet", "xprotonet", "mprotonet", "maprotonet", "cnn"])
def test_paper_preset_starts_from_imagenet_and_cpu_small_from_random(bundle):
    configs = BUNDLES_DIR / bundle / "configs"
    for preset, expected in (("paper", "imagenet"), ("cpu_small", None)):
        parser = ConfigParser()
        parser.read_config([configs / "train.yaml", configs / "presets" / f"{preset}.yaml"])
        assert parser["pretrained"] == expected and parser["network_def"]["pretrained"] == "@pretrained"
        assert parser["pretrained_path"] is None and parser["network_def"]["pretrained_path"] == "@pretrained_path"
    parser.read_config([configs / "train.yaml", configs / "presets" / "paper.yaml", configs / "evaluate.yaml"])
    assert parser["network_def"]["pretrained"] is None  # evaluation loads a checkpoint: no ImageNet file needed


# ---------------------------------------------------------------- MedicalNet (3D, D-first kernels)


def test_medicalnet_conversion_of_every_tensor():
    sd3d = _bottleneck_resnet_state_dict(spatial=3, in_channels=1, prefix="module.")
    encoder = _encoder()
    converted = medicalnet_state_dict(sd3d, encoder)
    assert set(converted) == set(encoder.state_dict())
    for key, tensor in converted.items():
        src = sd3d["module." + key]
        if src.ndim != 5:
            assert torch.equal(tensor, src), key
            continue
        k = src.shape[-1]
        if key == "conv1.weight":  # one MRI channel -> 4 sequences, each 1/4 of the weight
            assert tensor.shape[1] == 4
            src = src.expand(-1, 4, -1, -1, -1) / 4
        for h in range(k):  # ours (O, I, kh, kw, kd) = MedicalNet's (O, I, kd, kh, kw)
            for w in range(k):
                for d in range(k):
                    assert torch.equal(tensor[:, :, h, w, d], src[:, :, d, h, w]), (key, h, w, d)


def test_medicalnet_kernels_give_the_same_response_on_our_axis_order(tmp_path):
    sd3d = _bottleneck_resnet_state_dict(spatial=3, in_channels=1, prefix="module.")
    torch.save(sd3d, tmp_path / "resnet_medicalnet.pth")
    encoder = load_medicalnet_resnet(_encoder(), tmp_path / "resnet_medicalnet.pth")
    vol_dhw = torch.randn(1, 16, 5, 6, 7)  # MedicalNet's (D, H, W)
    ours = F.conv3d(vol_dhw.permute(0, 1, 3, 4, 2), encoder.layer1[0].conv2.weight, padding=1)
    theirs = F.conv3d(vol_dhw, sd3d["module.layer1.0.conv2.weight"], padding=1)
    torch.testing.assert_close(ours, theirs.permute(0, 1, 3, 4, 2), rtol=1e-4, atol=1e-4)
    # conv1: an MRI volume copied to the 4 input channels responds as in MedicalNet
    mri = torch.randn(1, 1, 9, 10, 11)
    ours = F.conv3d(mri.permute(0, 1, 3, 4, 2).expand(-1, 4, -1, -1, -1), encoder.conv1.weight, stride=2, padding=3)
    theirs = F.conv3d(mri, sd3d["module.conv1.weight"], stride=2, padding=3)
    torch.testing.assert_close(ours, theirs.permute(0, 1, 3, 4, 2), rtol=1e-4, atol=1e-4)


def test_medicalnet_errors():
    sd3d = _bottleneck_resnet_state_dict(spatial=3, in_channels=1)
    with pytest.raises(ValueError, match="MedicalNet 'conv1.weight' has shape"):
        medicalnet_state_dict(sd3d, ResNetEncoder(layers=LAYERS, widths=(8, 16)))
    del sd3d["bn1.bias"]
    with pytest.raises(KeyError, match="bn1.bias"):
        medicalnet_state_dict(sd3d, _encoder())
