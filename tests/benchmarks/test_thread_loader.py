"""ThreadDataLoader (augmentation of the next batch in a thread during the step) yields exactly DataLoader's batches.

The speed-up measured by ``benchmarks/bench_data.py --part epoch --thread-loader`` for ``num_workers: 0`` presets
is only acceptable if training sees the same batches: same shuffling, same augmentation draws, and the same draws
of torch's global RNG in the training step (the mapping loss draws its rescale factor from it), with the per-epoch
reseeding of :class:`~monai_protoshare.engines.PrototypeTrainer`.
"""

import torch
from monai.data import DataLoader, Dataset, ThreadDataLoader
from monai.data.utils import set_rnd

from monai_protoshare.data.transforms import augmentation_transforms


def _epochs(loader_type, epochs=2):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    items = [{"image": torch.randn(4, 16, 16, 12, generator=g), "label": i % 2} for i in range(6)]
    dataset = Dataset(items, augmentation_transforms("image", (), prob_rotation=0.5, prob_noise=0.5, prob_blur=0.5))
    loader = loader_type(dataset, batch_size=2, shuffle=True, num_workers=0)
    seen = []
    for epoch in range(1, epochs + 1):
        torch.manual_seed(epoch)  # the trainer reseeds at EPOCH_STARTED
        set_rnd(dataset, epoch)
        for batch in loader:
            step_draw = torch.randint(1000, (1,))  # the training step's use of the global RNG
            seen.append((batch["image"].as_tensor().clone(), batch["label"].clone(), step_draw))
    return seen


def test_thread_loader_yields_the_same_batches_and_leaves_the_step_rng_alone():
    plain, threaded = _epochs(DataLoader), _epochs(ThreadDataLoader)
    assert len(plain) == len(threaded) == 6
    for (image_a, label_a, draw_a), (image_b, label_b, draw_b) in zip(plain, threaded, strict=True):
        assert torch.equal(image_a, image_b) and torch.equal(label_a, label_b) and torch.equal(draw_a, draw_b)
    # the augmentation really is random: the two epochs differ
    assert not torch.equal(torch.cat([b[0] for b in plain[:3]]).sum(0), torch.cat([b[0] for b in plain[3:]]).sum(0))
