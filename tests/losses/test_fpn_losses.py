"""FPN-IAIA-BL's objective (eq. 4): orthogonality of each class's prototypes, cluster/separation similarity, total."""

from __future__ import annotations

import pytest
import torch

from monai_protoshare.losses import FPNIAIABLLoss, PrototypeOrthogonalityLoss, prototype_orthogonality_loss
from monai_protoshare.losses.clustering_separation import class_specific_clustering, class_specific_separation
from monai_protoshare.networks import build_network

SMALL = {"encoder_layers": (1, 1), "encoder_widths": (4, 8), "embedding_dim": 8}


def test_orthogonal_prototypes_cost_nothing_and_parallel_ones_do():
    basis = torch.eye(4) * torch.tensor([2.0, 0.5, 3.0, 1.0]).view(-1, 1)  # orthogonal, not unit length
    groups = torch.tensor([0, 0, 1, 1])
    assert prototype_orthogonality_loss(basis, groups).item() == 0.0
    # same direction within a group: the off-diagonal cosines are 1, two entries per pair
    parallel = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    assert prototype_orthogonality_loss(parallel, torch.tensor([0, 0, 1])).item() == pytest.approx(2.0)
    # prototypes in different groups may be parallel
    assert prototype_orthogonality_loss(parallel, torch.tensor([0, 1, 2])).item() == pytest.approx(0.0)


@pytest.mark.parametrize("groups,expected", [("class_level", 0.0), ("class", 2.0)])
def test_network_groups_are_class_and_level(groups, expected):
    net = build_network("fpn_iaia_bl", prototypes_per_level_class=((1, 1), (0, 0), (1, 1)), **SMALL)
    with torch.no_grad():  # class 0 has the same vector at levels 1 and 3; class 1 two orthogonal ones
        for vectors in net.prototypes.vectors:
            vectors.copy_(torch.eye(8)[:2])
        net.prototypes.vectors[1][1] = torch.eye(8)[2]
    assert PrototypeOrthogonalityLoss(groups)(net).item() == pytest.approx(expected)


def test_eq4_combines_the_terms_with_their_weights():
    torch.manual_seed(0)
    net = build_network("fpn_iaia_bl", **SMALL)
    out = net.explain(torch.randn(2, 4, 32, 32, 24))
    labels = torch.tensor([0, 1])
    terms = FPNIAIABLLoss(lambda_ortho=0.3)(net, out, labels)
    best = torch.cat([a.flatten(2).amax(dim=-1) for a in out.attention], dim=1)
    identity = net.prototype_class_identity
    torch.testing.assert_close(terms["clst"], class_specific_clustering(best, labels, identity))
    torch.testing.assert_close(terms["sep"], class_specific_separation(best, labels, identity))
    assert terms["fine"].item() == 0.0 and terms["ortho"].item() > 0.0
    expected = terms["cls"] + 0.8 * terms["clst"] + 0.08 * terms["sep"] + 0.3 * terms["ortho"]
    torch.testing.assert_close(terms["loss"], expected)
    focal = FPNIAIABLLoss(cluster_similarity="focal")(net, out, labels)
    torch.testing.assert_close(focal["clst"], class_specific_clustering(out.similarities, labels, identity))
    with pytest.raises(ValueError, match="with_seg"):
        FPNIAIABLLoss(lambda_fine=0.1)(net, out, labels)
