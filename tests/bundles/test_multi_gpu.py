"""multi_gpu_train.yaml with two gloo processes on CPU: both ranks finish with identical prototypes and exit 0."""

import torch

from tests.bundles.conftest import BUNDLES_DIR, run_two_gloo_ranks, tiny_overrides


def test_two_process_gloo_training(bundle_cohort, tmp_path):
    root = BUNDLES_DIR / "um_protoshare"
    overrides = {
        **tiny_overrides("um_protoshare"),
        "dataset_dir": str(bundle_cohort),
        "output_dir": str(tmp_path),
        "fold": 0,
    }
    # each rank saves its final prototypes for the comparison; the bundle's own `finalize` ends the run
    save = "torch.save(@network.prototypes.state_dict(), os.path.join(@fold_dir, f'rank{dist.get_rank()}.pt'))"
    result = run_two_gloo_ranks(root, overrides, ("run#0", f"$[@train#trainer.run(), {save}]"))
    assert result.returncode == 0, result.stderr[-4000:]
    fold = tmp_path / "fold0"
    rank0 = torch.load(fold / "rank0.pt", weights_only=True)
    rank1 = torch.load(fold / "rank1.pt", weights_only=True)
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0, msg=key)
    assert (fold / "checkpoints" / "model.pt").is_file() and (fold / "prototypes.json").is_file()
