import torch
from scipy.stats import spearmanr

from monai_protoshare.explain.evidence_checks import prototype_removal_error, randomised_copy, spearman_correlation
from monai_protoshare.networks import build_network
from tests.toy_data import TINY_NET


def test_spearman_matches_scipy():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 1, 5, 4, 3, generator=g), torch.rand(3, 1, 5, 4, 3, generator=g)
    b[1] = a[1] ** 3  # monotone: correlation 1
    got = spearman_correlation(a, b)
    for i in range(3):
        assert abs(got[i].item() - spearmanr(a[i].flatten(), b[i].flatten()).statistic) < 1e-9
    assert abs(got[1].item() - 1.0) < 1e-9


def test_prototype_removal_error_is_zero_for_a_linear_read_out_and_not_with_a_bias():
    layer = torch.nn.Linear(6, 2, bias=False)
    sims = torch.rand(4, 6)
    assert prototype_removal_error(layer, sims).max() < 1e-6
    biased = torch.nn.Linear(6, 2, bias=True)
    with torch.no_grad():
        biased.weight.copy_(layer.weight)
    # a hidden non-linearity would show up; a bias alone cancels in differences, so use a squashing read-out
    squashed = torch.nn.Sequential(biased, torch.nn.Tanh())
    squashed.weight = biased.weight
    assert prototype_removal_error(squashed, sims).max() > 1e-3


def test_randomised_copy_changes_every_learned_tensor_but_not_the_original():
    torch.manual_seed(0)
    net = build_network("um_protoshare", **TINY_NET)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    clone = randomised_copy(net, seed=1)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])
    changed = [k for k, v in clone.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    weights = [k for k in before if k.endswith("weight") and before[k].ndim >= 2]  # every conv / linear layer
    assert set(weights) <= set(changed)
    assert any("prototypes.vectors" in k for k in changed)
