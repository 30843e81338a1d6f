"""The segmentation bundles' multi_gpu_train.yaml with two gloo processes on CPU: both ranks end training with
identical parameters (the gradients are averaged over ranks), rank 0 writes the model, and both exit 0.

BN running statistics are rank 0's before each forward (DDP's ``broadcast_buffers``), so after the last forward
each rank holds its own; rank 0's are the ones saved, as with DDP."""

import pytest
import torch

from tests.bundles.conftest import BUNDLES_DIR, run_two_gloo_ranks
from tests.bundles.test_seg_bundles import MODEL, TINY_SEG


@pytest.mark.slow  # two torchrun processes each: about 50 s a bundle on 2 shared cores
@pytest.mark.parametrize("bundle", ["proto_seg", "segresnet"])
def test_two_process_gloo_training(bundle, bundle_cohort, tmp_path):
    root = BUNDLES_DIR / bundle
    overrides = {
        **TINY_SEG,
        **MODEL[bundle],
        "epochs": 2,
        "dataset_dir": str(bundle_cohort),
        "output_dir": str(tmp_path),
        "model_path": None,
        "fold": 0,
    }
    # each rank saves its trained parameters for the comparison (before proto_seg's push, which rank 0 alone runs)
    save = "torch.save({k: v.detach() for k, v in @network.named_parameters()}, os.path.join(@fold_dir, f'rank{dist.get_rank()}.pt'))"
    result = run_two_gloo_ranks(root, overrides, ("run#1", f"$[@train#trainer.run(), {save}]"), timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    fold = tmp_path / "fold0"
    rank0 = torch.load(fold / "rank0.pt", weights_only=True)
    rank1 = torch.load(fold / "rank1.pt", weights_only=True)
    assert len(rank0) > 10
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0, msg=key)
    assert (fold / "checkpoints" / "model.pt").is_file()
    assert (fold / "prototypes.json").is_file() == (bundle == "proto_seg")
    assert "val_mean_dice" in result.stderr + result.stdout  # rank 0 validated every epoch
