import torch

from monai_protoshare.losses import class_coefficients, soft_class_coefficients
from monai_protoshare.networks import build_network

TINY = {"encoder_layers": (1, 1), "encoder_widths": (8, 16), "embedding_dim": 8}


def test_soft_coefficients_match_eq7_by_hand():
    w = torch.tensor([[2.0, -1.0, 0.5, 0.0], [1.0, -3.0, -0.5, 0.0]], requires_grad=True)
    zeta = soft_class_coefficients(w)
    expected = torch.tensor([[2 / 3, 0.0, 1.0, 0.0], [1 / 3, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(zeta, expected, atol=1e-5, rtol=0)
    assert not zeta.requires_grad  # detached: ζ never trains the classifier through clst/sep


def test_soft_coefficients_sum_to_one_where_any_weight_is_positive():
    w = torch.randn(3, 50).sign() * (0.1 + torch.rand(3, 50))  # |w| >= 0.1: eps negligible
    zeta = soft_class_coefficients(w)
    has_positive = (w > 0).any(dim=0)
    torch.testing.assert_close(zeta.sum(0)[has_positive], torch.ones(int(has_positive.sum())), atol=1e-5, rtol=0)
    assert torch.all(zeta.sum(0)[~has_positive] == 0)


def test_class_coefficients_follow_ownership():
    shared = build_network("um_protoshare_a2", **TINY)
    specific = build_network("um_protoshare_a1", **TINY)
    torch.testing.assert_close(class_coefficients(shared), soft_class_coefficients(shared.classifier.weight))
    identity = class_coefficients(specific)
    assert identity.shape == (2, 30)
    assert identity[0, :15].eq(1).all() and identity[1, 15:].eq(1).all() and identity.sum() == 30
