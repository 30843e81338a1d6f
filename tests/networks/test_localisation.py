"""Add-on (G_s) and mapping module (M_s): soft mask and per-prototype spatial L1 normalisation (App. A.2,
eq. 12-13), XProtoNet's plain and MProtoNet's min-max modes (App. F.1, peers.md §2)."""

from __future__ import annotations

import pytest
import torch

from monai_protoshare.networks import AddOn, MappingHead


def _identity_head(num_prototypes: int, mode: str) -> MappingHead:
    """A head whose second conv + BN are the identity, so ``maps_from_hidden(raw)`` sees raw maps M⁰ = raw."""
    head = MappingHead(num_prototypes, num_prototypes, hidden_channels=num_prototypes, mode=mode).eval()
    with torch.no_grad():
        head.conv2.weight.copy_(torch.eye(num_prototypes).view(num_prototypes, num_prototypes, 1, 1, 1))
    head.bn2.running_mean.zero_()
    head.bn2.running_var.fill_(1.0 - head.bn2.eps)
    return head


def _hand_made_maps() -> torch.Tensor:
    """(2, 3, 4, 3, 2) raw maps: a ramp, a single hot voxel, a constant; the second case scaled and shifted."""
    ramp = torch.linspace(-3, 3, 24).view(4, 3, 2)
    hot = torch.full((4, 3, 2), -4.0)
    hot[1, 2, 0] = 5.0
    const = torch.full((4, 3, 2), 0.3)
    case = torch.stack([ramp, hot, const])
    return torch.stack([case, 2 * case + 1])


def _soft_mask(m: torch.Tensor) -> torch.Tensor:
    """Eq. (12) with w = 10, σ = 0.5."""
    return 1.0 / (1.0 + torch.exp(-10.0 * (m - 0.5)))


def test_soft_mask_is_eq_12():
    head = MappingHead(4, 2)
    m = torch.linspace(-1, 2, 61)
    torch.testing.assert_close(head.soft_mask(m), _soft_mask(m))
    assert head.soft_mask(torch.tensor(0.5)) == 0.5


def test_l1_soft_maps_follow_eq_12_13_and_sum_to_one():
    head = _identity_head(3, "l1_soft")
    raw = _hand_made_maps()
    with torch.no_grad():
        mask, attention = head.maps_from_hidden(raw)
    expected_mask = _soft_mask(torch.sigmoid(raw))  # sigmoid to [0, 1], then the soft mask
    torch.testing.assert_close(mask, expected_mask)
    torch.testing.assert_close(attention, expected_mask / (expected_mask.sum(dim=(2, 3, 4), keepdim=True) + 1e-6))
    torch.testing.assert_close(attention.sum(dim=(2, 3, 4)), torch.ones(2, 3), rtol=0, atol=1e-6)
    # the constant map normalises to the uniform map; the hot voxel's weight against 23 cold ones
    torch.testing.assert_close(attention[:, 2], torch.full((2, 4, 3, 2), 1 / 24))
    hot, cold = _soft_mask(torch.sigmoid(torch.tensor(5.0))), _soft_mask(torch.sigmoid(torch.tensor(-4.0)))
    torch.testing.assert_close(attention[0, 1, 1, 2, 0], hot / (hot + 23 * cold + 1e-6))


def test_l1_normalisation_is_per_prototype():
    """Eq. (13) normalises each map over space alone (the reference code normalises across prototypes)."""
    head = _identity_head(3, "l1_soft")
    raw = _hand_made_maps()
    changed = raw.clone()
    changed[:, 0] += 3.0
    with torch.no_grad():
        _, a = head.maps_from_hidden(raw)
        _, b = head.maps_from_hidden(changed)
    torch.testing.assert_close(a[:, 1:], b[:, 1:])
    assert (a[:, 0] - b[:, 0]).abs().max() > 1e-3


def test_minmax_soft_maps_are_mprotonets():
    """m = ReLU(M⁰), min-max scaled per case jointly over prototypes and voxels (span >= 1e-4), soft mask."""
    head = _identity_head(3, "minmax_soft")
    raw = _hand_made_maps()
    with torch.no_grad():
        mask, attention = head.maps_from_hidden(raw)
    m = torch.relu(raw)
    for b in range(2):
        low, high = m[b].min(), m[b].max()
        torch.testing.assert_close(attention[b], _soft_mask((m[b] - low) / (high - low)))
    assert mask is attention or torch.equal(mask, attention)
    # all responses positive: the minimum is subtracted
    with torch.no_grad():
        _, shifted = head.maps_from_hidden(raw + 8.0)
    m = raw + 8.0
    assert m.min() > 0
    for b in range(2):
        torch.testing.assert_close(shifted[b], _soft_mask((m[b] - m[b].min()) / (m[b].max() - m[b].min())))
    # a case with no positive response: span clamped to 1e-4, every map 0 -> soft mask of -0.5
    with torch.no_grad():
        _, flat = head.maps_from_hidden(-torch.ones(1, 3, 2, 2, 2))
    torch.testing.assert_close(flat, _soft_mask(torch.zeros(1, 3, 2, 2, 2)))


def test_plain_maps_are_sigmoid():
    head = _identity_head(3, "plain")
    raw = _hand_made_maps()
    with torch.no_grad():
        mask, attention = head.maps_from_hidden(raw)
    torch.testing.assert_close(attention, torch.sigmoid(raw))
    torch.testing.assert_close(mask, attention)


def test_mapping_head_layers_and_hidden_features():
    """conv1x1 (C -> hidden, no bias) -> BN -> ReLU -> conv1x1 (hidden -> K_s, no bias) -> BN."""
    torch.manual_seed(0)
    head = MappingHead(16, 5, hidden_channels=8).eval()
    assert head.conv1.bias is None and head.conv2.bias is None
    assert (head.conv1.out_channels, head.conv2.out_channels, head.bn2.num_features) == (8, 5, 5)
    x = torch.randn(2, 16, 4, 4, 3)
    with torch.no_grad():
        hidden = head.hidden(x)
        torch.testing.assert_close(hidden, torch.relu(head.bn1(head.conv1(x))))
        mask, attention = head(x)
    assert hidden.shape == (2, 8, 4, 4, 3) and attention.shape == (2, 5, 4, 4, 3) and mask.shape == attention.shape


def test_mapping_mode_errors():
    with pytest.raises(ValueError, match="l1_soft"):
        MappingHead(4, 2, mode="l1-soft")
    with pytest.raises(ValueError):
        MappingHead(4, 2, mode="none")  # ProtoPNet has no mapping module at all


@pytest.mark.parametrize("prior", [0.5, 0.1, 0.02])
def test_mask_prior_sets_the_initial_fraction_of_voxels_on(prior):
    """With batch statistics, M⁰ = z + Φ⁻¹(π) with z standardised: a fraction π of voxels has sigmoid(M⁰) > ½."""
    torch.manual_seed(0)
    head = MappingHead(16, 3, hidden_channels=128, mask_prior=prior).train()  # 128 terms: M⁰ near Gaussian
    mask, _ = head(torch.randn(4, 16, 16, 16, 12))
    on = (mask > 0.5).double().mean(dim=(0, 2, 3, 4))  # soft mask > 1/2  <=>  sigmoid(M0) > 1/2  <=>  M0 > 0
    torch.testing.assert_close(on, torch.full((3,), prior, dtype=torch.double), rtol=0.15, atol=0.005)
    assert head.bn2.bias.detach().tolist() == pytest.approx([torch.special.ndtri(torch.tensor(prior)).item()] * 3)


@pytest.mark.parametrize("prior", [0.0, 1.0, -0.1])
def test_mask_prior_must_be_a_fraction(prior):
    with pytest.raises(ValueError, match="mask_prior"):
        MappingHead(4, 2, mask_prior=prior)


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_add_on_projects_to_the_embedding_dimension(activation):
    torch.manual_seed(0)
    add_on = AddOn(64, embedding_dim=32, activation=activation).eval()
    assert add_on.conv1.bias is None and add_on.conv2.bias is None
    assert (add_on.conv1.in_channels, add_on.conv1.out_channels, add_on.conv2.out_channels) == (64, 32, 32)
    x = torch.randn(2, 64, 4, 4, 3)
    with torch.no_grad():
        g = add_on(x)
        hidden = torch.relu(add_on.bn1(add_on.conv1(x)))
        pre = add_on.bn2(add_on.conv2(hidden))
    assert g.shape == (2, 32, 4, 4, 3)
    torch.testing.assert_close(g, torch.relu(pre) if activation == "relu" else torch.sigmoid(pre))


def test_add_on_activation_error():
    with pytest.raises(ValueError, match="sigmoid"):
        AddOn(8, 4, activation="sigmod")
