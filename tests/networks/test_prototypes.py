"""Prototype bank: descriptors (eq. 14), cosine similarity (§2.2, eq. 15), per-voxel similarity (ProtoPNet)
and push provenance kept in the state dict."""

from __future__ import annotations

import torch

from monai_protoshare.networks import PrototypeBank, masked_descriptors
from monai_protoshare.networks.prototypes import PROVENANCE_ID_BYTES


def test_descriptor_is_the_map_weighted_sum_divided_by_the_voxel_count():
    """Eq. (14): H^k_e = (1 / (H W D)) Σ_{m,n,l} G_e(m,n,l) M^k(m,n,l), written as explicit loops."""
    g = torch.randn(2, 3, 2, 3, 2, dtype=torch.float64)
    m = torch.rand(2, 4, 2, 3, 2, dtype=torch.float64)
    h = masked_descriptors(g, m)
    assert h.shape == (2, 4, 3)
    for b in range(2):
        for k in range(4):
            for e in range(3):
                total = sum(g[b, e, i, j, n] * m[b, k, i, j, n] for i in range(2) for j in range(3) for n in range(2))
                torch.testing.assert_close(h[b, k, e], total / 12)


def test_descriptor_of_a_one_hot_map_is_the_voxel_feature_over_the_voxel_count():
    g = torch.randn(1, 5, 4, 4, 3)
    m = torch.zeros(1, 1, 4, 4, 3)
    m[0, 0, 2, 1, 0] = 1.0
    torch.testing.assert_close(masked_descriptors(g, m)[0, 0], g[0, :, 2, 1, 0] / 48)


def test_cosine_similarity_equals_the_formula():
    bank = PrototypeBank((2, 3), embedding_dim=4)
    with torch.no_grad():
        bank.vectors[0].copy_(torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]]))
    h = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 4.0]]])  # (B=1, K=2, E=4)
    torch.testing.assert_close(bank.similarity(h, 0), torch.tensor([[1 / 2**0.5, 0.8]]))
    d = torch.randn(5, 3, 4)
    p = bank.vectors[1].detach()
    expected = (d * p).sum(-1) / (d.norm(dim=-1) * p.norm(dim=-1))
    torch.testing.assert_close(bank.similarity(d, 1), expected)
    # cosine ignores the descriptor's scale (so eq. 14's 1/(HWD) does not matter)
    torch.testing.assert_close(bank.similarity(7.0 * d, 1), expected)


def test_voxel_similarities_are_cosines_at_every_voxel():
    bank = PrototypeBank((3,), embedding_dim=6)
    g = torch.randn(2, 6, 3, 2, 2)
    sims = bank.voxel_similarities(g, 0)
    assert sims.shape == (2, 3, 3, 2, 2)
    p = bank.vectors[0].detach()
    v = g[1, :, 2, 0, 1]
    torch.testing.assert_close(sims[1, :, 2, 0, 1], (p @ v) / (p.norm(dim=1) * v.norm()))


def test_bank_layout_init_and_scale_slices():
    torch.manual_seed(0)
    bank = PrototypeBank((9, 15, 6), embedding_dim=8)
    assert bank.num_prototypes == 30 and [tuple(v.shape) for v in bank.vectors] == [(9, 8), (15, 8), (6, 8)]
    assert bank.scale_slices() == [slice(0, 9), slice(9, 24), slice(24, 30)]
    values = torch.cat([v.detach() for v in bank.vectors])
    assert values.min() >= 0 and values.max() < 1  # U[0, 1)


def test_provenance_before_and_after_a_push():
    bank = PrototypeBank((2, 3), embedding_dim=4)
    assert bank.source_ids() == [""] * 5
    assert all(r["push_epoch"] == -1 and r["source_box"] == [-1] * 6 for r in bank.provenance())
    long_id = "x" * 100
    bank.set_source_ids(torch.tensor([1, 3]), ["BraTS20_Training_042", long_id])
    bank.source_box[3] = torch.tensor([0, 8, 16, 8, 16, 24])
    bank.source_similarity[3] = 0.5
    bank.push_epoch[3] = 20
    records = bank.provenance()
    assert [(r["scale_index"], r["index"], r["global_index"]) for r in records] == [
        (0, 0, 0),
        (0, 1, 1),
        (1, 0, 2),
        (1, 1, 3),
        (1, 2, 4),
    ]
    assert records[1]["source_subject_id"] == "BraTS20_Training_042" and records[0]["source_subject_id"] is None
    assert records[3] == {
        "scale_index": 1,
        "index": 1,
        "global_index": 3,
        "source_subject_id": "x" * PROVENANCE_ID_BYTES,
        "source_box": [0, 8, 16, 8, 16, 24],
        "source_similarity": 0.5,
        "push_epoch": 20,
    }


def test_provenance_round_trips_through_a_weights_only_checkpoint(tmp_path):
    bank = PrototypeBank((2, 3), embedding_dim=4)
    bank.set_source_ids(torch.tensor([0, 4]), ["BraTS20_Training_001", "sujet-é"])
    bank.source_box[4] = torch.tensor([1, 2, 3, 4, 5, 6])
    bank.push_epoch[:] = 10
    assert {"source_id", "source_box", "source_similarity", "push_epoch"} <= set(bank.state_dict())
    torch.save(bank.state_dict(), tmp_path / "bank.pt")
    other = PrototypeBank((2, 3), embedding_dim=4)
    other.load_state_dict(torch.load(tmp_path / "bank.pt", weights_only=True))
    assert other.provenance() == bank.provenance()
    assert other.source_ids()[4] == "sujet-é"
    assert torch.equal(other.vectors[1], bank.vectors[1])
