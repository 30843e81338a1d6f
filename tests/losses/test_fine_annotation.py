"""Fine-annotation loss (FPN-IAIA-BL eq. 5, Supplement B) on hand-made masks and maps, and its data check."""

from __future__ import annotations

import math

import pytest
import torch

from monai_protoshare.losses import FineAnnotationLoss, LatentSpaceLoss, fine_annotation_loss, require_segmentations
from monai_protoshare.networks import build_network

IDENTITY = torch.eye(2)  # prototype 0 belongs to class 0 (LGG), prototype 1 to class 1 (HGG)
OUT, IN = torch.ones(2, 2), 1.0 - torch.eye(2)  # the defaults
MASK = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 2, 2, 1)  # first two voxels are tumour


def _maps(*per_prototype):
    return [torch.tensor(per_prototype, dtype=torch.float).view(1, len(per_prototype), 2, 2, 1)]


def test_activation_inside_the_mask_costs_nothing_for_the_own_class():
    maps = _maps([3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0])
    assert fine_annotation_loss(maps, MASK, torch.tensor([0]), IDENTITY, OUT, IN).item() == 0.0


def test_activation_costs_what_the_coefficients_say():
    # own-class prototype: outside activation (0, 0, 3, 4) -> lambda_out * 5; other-class prototype inside (3, 4) -> 5
    maps = _maps([0.0, 0.0, 3.0, 4.0], [3.0, 4.0, 0.0, 0.0])
    label = torch.tensor([0])
    assert fine_annotation_loss(maps, MASK, label, IDENTITY, OUT, IN).item() == pytest.approx(10.0)
    out = torch.tensor([[2.0, 1.0], [1.0, 1.0]])
    inside = torch.tensor([[0.0, 0.5], [1.0, 0.0]])
    assert fine_annotation_loss(maps, MASK, label, IDENTITY, out, inside).item() == pytest.approx(2 * 5 + 0.5 * 5)
    # a sample of class 1 reads row 1 of the tables: prototype 0 is now the other class (inside 0, outside 3, 4)
    assert fine_annotation_loss(maps, MASK, torch.tensor([1]), IDENTITY, out, inside).item() == pytest.approx(5 + 0)
    # inside and outside in one map: ‖a (1 - m) P + b m P‖ = sqrt(a² |out|² + b² |in|²)
    mixed = _maps([1.0, 2.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0])
    value = fine_annotation_loss(mixed, MASK, torch.tensor([1]), IDENTITY, out, inside).item()
    assert value == pytest.approx(math.sqrt(1.0**2 * 4 + 1.0**2 * 5))


def test_shared_prototypes_weight_each_class_term_by_zeta():
    maps = _maps([0.0, 0.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0])
    zeta = torch.tensor([[0.25, 0.0], [0.75, 0.0]])
    out = torch.tensor([[2.0, 1.0], [1.0, 1.0]])
    value = fine_annotation_loss(maps, MASK, torch.tensor([0]), zeta, out, IN).item()
    assert value == pytest.approx(0.25 * 2 * 5 + 0.75 * 1 * 5)


def test_coarse_maps_are_upsampled_to_the_mask_and_the_batch_is_averaged():
    maps = [torch.full((2, 1, 1, 1, 1), 2.0)]  # constant map: trilinear upsampling keeps 2 everywhere
    masks = torch.zeros(2, 1, 4, 4, 2)
    masks[1, :, :2] = 1.0  # case 1: half the voxels are tumour
    coefficients = torch.tensor([[1.0], [0.0]])
    value = fine_annotation_loss(maps, masks, torch.tensor([0, 0]), coefficients, OUT, IN)
    assert value.item() == pytest.approx((2 * math.sqrt(32) + 2 * math.sqrt(16)) / 2)


def test_zero_cost_has_a_zero_not_a_nan_gradient():
    maps = [torch.zeros(1, 2, 2, 2, 1, requires_grad=True)]
    fine_annotation_loss(maps, MASK, torch.tensor([0]), IDENTITY, OUT, IN).backward()
    assert torch.equal(maps[0].grad, torch.zeros_like(maps[0]))


def test_module_reads_the_networks_maps_and_needs_masks():
    torch.manual_seed(0)
    net = build_network("mprotonet", encoder_layers=(1, 1), encoder_widths=(4, 8), embedding_dim=8)
    out = net.explain(torch.randn(2, 4, 32, 32, 24))
    masks = torch.zeros(2, 1, 32, 32, 24)
    masks[:, :, 8:24, 8:24, 6:18] = 1.0
    labels = torch.tensor([0, 1])
    loss = FineAnnotationLoss()
    expected = fine_annotation_loss(out.masks, masks, labels, net.prototype_class_identity, OUT, IN)
    torch.testing.assert_close(loss(net, out, labels, masks), expected)
    loss(net, out, labels, masks).backward()
    assert net.mapping_heads[0].conv2.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="with_seg: true"):
        loss(net, out, labels, None)
    with pytest.raises(ValueError, match="lambda_in must be 2x2"):
        FineAnnotationLoss(lambda_in=[[0, 1, 1], [1, 0, 1], [1, 1, 0]])(net, out, labels, masks)


def test_latent_loss_adds_the_fine_term_only_when_weighted():
    torch.manual_seed(0)
    net = build_network("um_protoshare", encoder_layers=(1, 1), encoder_widths=(4, 8), embedding_dim=8)
    out = net.explain(torch.randn(2, 4, 32, 32, 24))
    labels, masks = torch.tensor([0, 1]), torch.ones(2, 1, 32, 32, 24)
    plain = LatentSpaceLoss(lambda_map=0.0)(net, out, labels)
    fine = LatentSpaceLoss(lambda_map=0.0, lambda_fine=0.5)(net, out, labels, masks=masks)
    assert plain["fine"].item() == 0.0 and fine["fine"].item() > 0.0
    torch.testing.assert_close(fine["loss"], plain["loss"] + 0.5 * fine["fine"])


def test_bad_tables_and_missing_segmentations_are_named():
    with pytest.raises(ValueError, match="lambda_out must be a square table"):
        FineAnnotationLoss(lambda_out=[[1.0, -1.0], [1.0, 1.0]])
    items = [{"subject_id": "A", "seg": "a_seg.nii.gz"}, {"subject_id": "B", "seg": None}, {"subject_id": "C"}]
    with pytest.raises(ValueError, match="'B' has none"):
        require_segmentations(items)
    assert require_segmentations(items[:1]) == items[:1]
