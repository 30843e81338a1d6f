import pytest
import torch

from monai_protoshare.losses import (
    ClusteringSeparationLoss,
    class_agnostic_clustering,
    class_agnostic_separation,
    class_specific_clustering,
    class_specific_separation,
    soft_class_coefficients,
)

S = torch.tensor([[0.9, 0.2, 0.5], [0.1, 0.8, -0.3]])
Y = torch.tensor([0, 1])
ZETA = torch.tensor([[0.75, 0.0, 0.0], [0.25, 1.0, 0.0]])  # prototype 2 has no positive weight


def test_class_agnostic_clustering_eq8_by_hand():
    # case 0: -(0.75*0.9); case 1: -(0.25*0.1 + 1.0*0.8)
    expected = -(0.675 + 0.825) / 2
    assert class_agnostic_clustering(S, Y, ZETA).item() == pytest.approx(expected)


def test_class_agnostic_separation_eq9_by_hand():
    # separation weight of prototype k for class y = sum over other classes of zeta
    # case 0 (y=0): 0.25*0.9 + 1.0*0.2 + 0*0.5; case 1 (y=1): 0.75*0.1 + 0 + 0
    expected = (0.425 + 0.075) / 2
    assert class_agnostic_separation(S, Y, ZETA).item() == pytest.approx(expected)


def test_prototype_without_positive_weight_gets_zero_separation_weight():
    w = torch.tensor([[-1.0, 2.0], [-0.5, 1.0]])
    zeta = soft_class_coefficients(w)
    s = torch.tensor([[0.7, 0.0], [0.7, 0.0]], requires_grad=True)
    loss = class_agnostic_separation(s, torch.tensor([0, 1]), zeta) + class_agnostic_clustering(
        s, torch.tensor([0, 1]), zeta
    )
    loss.backward()
    assert torch.all(s.grad[:, 0] == 0)  # eq. 9 uses sum_{c' != y} zeta, not 1 - zeta


def test_class_specific_losses_eq22_23_by_hand():
    identity = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    s = torch.tensor([[0.3, -0.2, 0.9, 0.1], [-0.5, 0.4, -0.6, -0.7]])
    y = torch.tensor([0, 1])
    # clst: -max own: case0 own {0.3,-0.2} -> 0.3; case1 own {-0.6,-0.7} -> -0.6 (negative kept)
    assert class_specific_clustering(s, y, identity).item() == pytest.approx(-(0.3 - 0.6) / 2)
    # sep: max other: case0 {0.9, 0.1} -> 0.9; case1 {-0.5, 0.4} -> 0.4
    assert class_specific_separation(s, y, identity).item() == pytest.approx((0.9 + 0.4) / 2)


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="share K"):
        class_agnostic_clustering(S, Y, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="labels must have shape"):
        class_agnostic_clustering(S, torch.tensor([0, 1, 1]), ZETA)


def test_module_dispatches_on_ownership():
    class Net(torch.nn.Module):
        ownership = "shared"

        def __init__(self):
            super().__init__()
            self.classifier = torch.nn.Linear(3, 2, bias=False)
            with torch.no_grad():
                self.classifier.weight.copy_(torch.tensor([[3.0, 0.0, -1.0], [1.0, 2.0, -1.0]]))

    clst, sep = ClusteringSeparationLoss()(Net(), S, Y)
    assert clst.item() == pytest.approx(class_agnostic_clustering(S, Y, ZETA).item(), abs=1e-5)
    assert sep.item() == pytest.approx(class_agnostic_separation(S, Y, ZETA).item(), abs=1e-5)
