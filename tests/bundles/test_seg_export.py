"""The segmentation bundles' networks export with ``ckpt_export`` as TorchScript script (the model zoo CI's export,
no trace): the scripted proto_seg returns the region logits of the eager network at input sizes other than any
example's, and keeps its input check."""

import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export

from tests.bundles.conftest import BUNDLES_DIR

SIZES = {
    "proto_seg": {"encoder_layers": [1], "encoder_widths": [4], "embedding_dim": 8, "num_prototypes": 5},
    "segresnet": {"init_filters": 8, "blocks_down": [1, 1], "blocks_up": [1]},
}


@pytest.mark.parametrize("bundle", ["proto_seg", "segresnet"])
def test_script_export_equals_eager(bundle, tmp_path):
    root = BUNDLES_DIR / bundle
    config = {
        "net_id": "network_def",
        "meta_file": str(root / "configs" / "metadata.json"),
        "config_file": str(root / "configs" / "inference.yaml"),
        "bundle_root": str(root),
    }
    parser = ConfigParser()
    parser.read_config(config["config_file"])
    parser.update(SIZES[bundle])
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def").eval()
    with torch.no_grad():  # non-trivial BN statistics
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    torch.save(network.state_dict(), tmp_path / "model.pt")
    ckpt_export(filepath=str(tmp_path / "model.ts"), ckpt_file=str(tmp_path / "model.pt"), **config, **SIZES[bundle])
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    generator = torch.Generator().manual_seed(1)
    for size in [(16, 16, 8), (24, 16, 32)]:
        x = torch.randn(2, 4, *size, generator=generator)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), network(x), rtol=1e-4, atol=1e-5, msg=f"logits differ at {size}")
    if bundle == "proto_seg":
        with pytest.raises(torch.jit.Error, match=r"input spatial size \(18, 16, 8\) must be a multiple of 4"):
            scripted(torch.zeros(1, 4, 18, 16, 8))
