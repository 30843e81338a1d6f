import math

import numpy as np
import pytest
import torch

from monai_protoshare.explain.evidence import (
    evidence_mass_in_mask,
    explain_cases,
    most_shared_prototypes,
    overlay_cutoff,
    prototype_catalogue,
    prototype_contributions,
    prototype_sharedness,
    sequence_similarity_drops,
)
from monai_protoshare.networks import build_network
from tests.explain.evidence_cases import tiny_network


def _images(batch=2, seed=0):
    return torch.randn(batch, 4, 16, 16, 8, generator=torch.Generator().manual_seed(seed))


def test_contributions_are_weight_times_similarity_and_sum_to_the_logits():
    net = tiny_network()
    with torch.no_grad():
        net.classifier.weight.copy_(torch.randn(2, 30, generator=torch.Generator().manual_seed(1)))
    cases = explain_cases(net, _images(), ["a", "b"], top_k=4)
    logits = net(_images())
    for b, case in enumerate(cases):
        expected = net.classifier.weight.detach() * case.similarities  # eq. 31: w[c, k] S_k
        assert torch.allclose(case.contributions, expected, atol=1e-6)
        assert torch.allclose(case.contributions.sum(dim=1), logits[b], atol=1e-5)
        assert torch.allclose(case.logits, logits[b], atol=1e-5)
        assert case.prediction == int(logits[b].argmax()) == case.target


def test_top_prototypes_are_the_largest_contributions_to_the_explained_class():
    net = tiny_network()
    with torch.no_grad():
        net.classifier.weight.copy_(torch.randn(2, 30, generator=torch.Generator().manual_seed(2)))
    [case] = explain_cases(net, _images(1), ["a"], target=[0], top_k=5)
    own = case.contributions[0]
    assert case.target == 0
    assert case.top_prototypes == own.argsort(descending=True)[:5].tolist()
    # the Fig.-5 prototype of each scale is the scale's largest contribution when no sharedness is given
    for sl, j in zip(net.scale_slices(), case.scale_prototypes, strict=True):
        assert j == sl.start + int(own[sl].argmax())
    assert set(case.maps) == set(case.top_prototypes) | set(case.scale_prototypes)


def test_prototype_maps_are_density_rescaled_to_mean_one():
    # l1_soft maps sum to 1 over their scale's voxels (eq. 13): times the voxel count their mean is 1
    net = tiny_network().train()
    [case] = explain_cases(net, _images(1), ["a"], top_k=3)
    assert net.training  # evaluated in eval mode, the caller's mode restored
    for volume in case.maps.values():
        assert volume.shape == (16, 16, 8)
        assert float(volume.mean()) == pytest.approx(1.0, abs=0.05)
    assert case.class_map.shape == (16, 16, 8)


def test_sequence_drop_is_zero_for_a_sequence_the_model_ignores():
    net = tiny_network()
    with torch.no_grad():
        net.backbone.encoder.conv1.weight[:, 2].zero_()  # T2 reaches nothing: the only path in is conv1
    image = _images(1)
    [case] = explain_cases(net, image, ["a"], top_k=3)
    assert case.sequence_drops.shape == (30, 4)
    assert case.sequence_drops[:, 2].abs().max() <= 1e-6
    assert case.sequence_drops[:, [0, 1, 3]].abs().max() > 1e-4  # the others do matter


def test_sequence_drop_equals_separate_forward_of_each_ablation():
    net = tiny_network()
    image = _images(1, seed=3)
    with torch.no_grad():
        base = net.explain(image).similarities[0]
        drops = sequence_similarity_drops(net, image, base)
        for m in range(4):
            ablated = image.clone()
            ablated[:, m] = 0.0
            expected = base - net.explain(ablated).similarities[0]
            assert torch.allclose(drops[:, m], expected, atol=1e-5)


def test_sharedness_is_eq_29_for_one_case_per_class_and_class_means_otherwise():
    sims = torch.tensor([[0.9, 0.2, 0.5], [0.4, 0.8, 0.6]])
    assert torch.equal(prototype_sharedness(sims, torch.tensor([0, 1]), 2), sims.min(dim=0).values)
    population = torch.tensor([[0.9, 0.2], [0.5, 0.4], [0.3, 0.9]])  # class 0: rows 0, 1; class 1: row 2
    expected = torch.tensor([min(0.7, 0.3), min(0.3, 0.9)])
    assert torch.allclose(prototype_sharedness(population, torch.tensor([0, 0, 1]), 2), expected)
    with pytest.raises(ValueError, match="classes \\[1\\] have none"):
        prototype_sharedness(population, torch.tensor([0, 0, 0]), 2)


def test_most_shared_prototype_per_scale_is_eq_30():
    net = tiny_network()  # (9, 15, 6) prototypes
    sharedness = torch.zeros(30)
    sharedness[[4, 9 + 11, 24 + 2]] = 1.0
    assert most_shared_prototypes(net, sharedness) == [4, 20, 26]
    [case] = explain_cases(net, _images(1), ["a"], sharedness=sharedness)
    assert case.scale_prototypes == [4, 20, 26]
    catalogue = prototype_catalogue(net, sharedness)
    assert catalogue.scales == [1] * 9 + [2] * 15 + [3] * 6
    assert catalogue.indices[20] == 11


def test_evidence_mass_in_mask():
    evidence = np.array([1.0, 2.0, 3.0, 4.0, -5.0])
    mask = np.array([0, 1, 1, 0, 1])
    assert evidence_mass_in_mask(evidence, mask) == pytest.approx(5.0 / 10.0)  # negative values carry no mass
    assert evidence_mass_in_mask(torch.ones(2, 3), torch.ones(2, 3)) == 1.0
    assert math.isnan(evidence_mass_in_mask(np.zeros(4), np.ones(4)))
    with pytest.raises(ValueError, match="same shape"):
        evidence_mass_in_mask(np.zeros(4), np.ones(5))


def test_overlay_cutoff_is_the_relative_level_of_the_range():
    assert overlay_cutoff(torch.tensor([2.0, 4.0, 10.0]), 0.5) == 6.0
    with pytest.raises(ValueError, match="overlay_threshold"):
        overlay_cutoff(torch.zeros(3), 1.5)


def test_bad_inputs_raise():
    net = tiny_network()
    with pytest.raises(ValueError, match="subject_ids"):
        explain_cases(net, _images(2), ["a"])
    with pytest.raises(ValueError, match="images must be"):
        explain_cases(net, torch.zeros(1, 3, 16, 16, 8), ["a"])
    with pytest.raises(ValueError, match="target"):
        explain_cases(net, _images(1), ["a"], target=[5])
    with pytest.raises(ValueError, match="PrototypeNetwork"):
        explain_cases(build_network("cnn", encoder_layers=(1, 1), encoder_widths=(4, 8)), _images(1), ["a"])
    with pytest.raises(ValueError, match="share K"):
        prototype_contributions(torch.zeros(2, 5), torch.zeros(1, 4))
