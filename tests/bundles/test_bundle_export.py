"""Every bundle's network exports (TorchScript script and trace, ONNX) and the exports equal eager at other sizes.

The model-zoo's CI exports with ``ckpt_export`` (``torch.jit.script``, no trace); a trace or an ONNX graph must not
freeze the example's sizes. Each export is compared with the eager network, logits and predicted classes, at input
sizes other than the one it was made from.
"""

import onnxruntime
import pytest
import torch
from monai.bundle import ckpt_export, onnx_export, verify_net_in_out

from monai_protoshare.networks import build_network
from tests.bundles.conftest import BUNDLES, BUNDLES_DIR

SHAPE = [16, 16, 8]
#: three input sizes (multiples of every encoder's coarsest stride, 8), none of them the export's example size; at the
#: largest ProtoPNet pools the top ⌈1 % · 180⌉ = 2 voxels of its 6 x 6 x 5 scale, at the example's 3 x 2 x 2 only 1
SIZES = [(16, 16, 8), (32, 24, 16), (48, 48, 40)]
EXAMPLE = [24, 16, 16]


def _size(bundle):
    if bundle == "maprotonet":
        return {"encoder_layers": [1], "encoder_widths": [4], "embedding_dim": 8}
    return {"encoder_layers": [1, 1], "encoder_widths": [4, 8], "embedding_dim": 8}


def _config(bundle):
    root = BUNDLES_DIR / bundle / "configs"
    return {
        "net_id": "network_def",
        "meta_file": str(root / "metadata.json"),
        "config_file": str(root / "inference.yaml"),
        "bundle_root": str(BUNDLES_DIR / bundle),
    }


def _eager_network(bundle, tmp_path):
    """A tiny network in eval mode with non-trivial batch-norm statistics, and its checkpoint file."""
    torch.manual_seed(0)
    network = build_network(bundle, **_size(bundle)).eval()
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
    ckpt = tmp_path / "model.pt"
    torch.save(network.state_dict(), ckpt)
    return network, ckpt


def _assert_equals_eager(exported, network, sizes=SIZES):
    """``exported(x)`` (B, C) equals ``network(x)`` in value and in predicted class, at every size."""
    generator = torch.Generator().manual_seed(1)
    for size in sizes:
        x = torch.randn(3, 4, *size, generator=generator)
        with torch.no_grad():
            expected = network(x)
            logits = exported(x)
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5, msg=f"logits differ at {size}")
        assert torch.equal(logits.argmax(dim=1), expected.argmax(dim=1)), f"class map differs at {size}"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_verify_net_in_out(bundle):
    verify_net_in_out(
        device="cpu",
        n=1,
        **_config(bundle),
        **{"_meta_#network_data_format#inputs#image#spatial_shape": SHAPE},
        **_size(bundle),
    )


@pytest.mark.parametrize("bundle", BUNDLES)
def test_script_export_equals_eager_at_three_sizes(bundle, tmp_path):
    """``python -m monai.bundle ckpt_export`` without ``--use_trace`` (the zoo CI's export)."""
    network, ckpt = _eager_network(bundle, tmp_path)
    ckpt_export(filepath=str(tmp_path / "model.ts"), ckpt_file=str(ckpt), **_config(bundle), **_size(bundle))
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    _assert_equals_eager(scripted, network)
    with pytest.raises(torch.jit.Error, match=r"input spatial size \(18, 16, 8\) must be a multiple of"):
        scripted(torch.zeros(1, 4, 18, 16, 8))


@pytest.mark.parametrize("bundle", BUNDLES)
def test_traced_export_equals_eager_at_other_sizes(bundle, tmp_path):
    """``ckpt_export --use_trace``: traced at one size, the graph still follows the input's size."""
    network, ckpt = _eager_network(bundle, tmp_path)
    ckpt_export(
        filepath=str(tmp_path / "model.ts"),
        ckpt_file=str(ckpt),
        use_trace=True,
        input_shape=[1, 4, *EXAMPLE],
        **_config(bundle),
        **_size(bundle),
    )
    _assert_equals_eager(torch.jit.load(str(tmp_path / "model.ts")), network)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_onnx_export_equals_eager_in_onnxruntime_at_two_sizes(bundle, tmp_path):
    """``python -m monai.bundle onnx_export``, run by onnxruntime at two sizes other than the example's."""
    network, ckpt = _eager_network(bundle, tmp_path)
    onnx_file = tmp_path / "model.onnx"
    onnx_export(
        filepath=str(onnx_file),
        ckpt_file=str(ckpt),
        use_trace=True,
        input_shape=[1, 4, *EXAMPLE],
        converter_kwargs={
            "dynamo": False,  # the trace-based exporter, whose graph keeps the sizes of dynamic_axes symbolic
            "input_names": ["image"],
            "output_names": ["pred"],
            "dynamic_axes": {"image": {0: "batch", 2: "h", 3: "w", 4: "d"}, "pred": {0: "batch"}},
        },
        **_config(bundle),
        **_size(bundle),
    )
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])

    def run(x):
        return torch.from_numpy(session.run(None, {"image": x.numpy()})[0])

    _assert_equals_eager(run, network, sizes=SIZES[::2])
