"""verify_net_in_out and TorchScript export (ckpt_export) work for every bundle; the export equals eager."""

import pytest
import torch
from monai.bundle import ckpt_export, verify_net_in_out

from monai_protoshare.networks import build_network
from tests.bundles.conftest import BUNDLES, BUNDLES_DIR

SHAPE = [16, 16, 8]


def _size(bundle):
    if bundle == "maprotonet":
        return {"encoder_layers": [1], "encoder_widths": [4], "embedding_dim": 8}
    return {"encoder_layers": [1, 1], "encoder_widths": [4, 8], "embedding_dim": 8}


@pytest.mark.parametrize("bundle", BUNDLES)
def test_verify_net_in_out(bundle):
    root = BUNDLES_DIR / bundle / "configs"
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(root / "metadata.json"),
        config_file=str(root / "inference.yaml"),
        bundle_root=str(BUNDLES_DIR / bundle),
        device="cpu",
        n=1,
        **{"_meta_#network_data_format#inputs#image#spatial_shape": SHAPE},
        **_size(bundle),
    )


@pytest.mark.parametrize("bundle", BUNDLES)
def test_torchscript_export_equals_eager(bundle, tmp_path):
    torch.manual_seed(0)
    size = _size(bundle)
    network = build_network(bundle if bundle != "um_protoshare" else "um_protoshare", **size)
    ckpt = tmp_path / "model.pt"
    torch.save(network.state_dict(), ckpt)
    root = BUNDLES_DIR / bundle / "configs"
    ckpt_export(
        net_id="network_def",
        filepath=str(tmp_path / "model.ts"),
        ckpt_file=str(ckpt),
        meta_file=str(root / "metadata.json"),
        config_file=str(root / "inference.yaml"),
        bundle_root=str(BUNDLES_DIR / bundle),
        use_trace=True,
        input_shape=[1, 4, *SHAPE],
        **size,
    )
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    network.eval()
    x = torch.randn(2, 4, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), network(x), rtol=1e-4, atol=1e-5)
