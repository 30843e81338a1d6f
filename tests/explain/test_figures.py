import numpy as np
import torch
from matplotlib.patches import Rectangle

from monai_protoshare.explain.evidence import PrototypeSource, explain_cases, prototype_catalogue
from monai_protoshare.explain.figures import case_figure, prototype_gallery, save_figure
from monai_protoshare.networks import build_network
from tests.explain.evidence_cases import tiny_network
from tests.toy_data import TINY_NET

BOX = (3, 5, 2, 7, 12, 6)  # x0, y0, z0, x1, y1, z1 (end exclusive)


def _source(subject="src001"):
    slices = torch.zeros(4, 16, 16)
    slices[:, BOX[0] : BOX[3], BOX[1] : BOX[4]] = 1.0  # the box is the bright region of its slice
    return PrototypeSource(subject, BOX, slices)


def _texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_case_figure_shows_each_scales_prototype_with_similarity_times_weight():
    net = tiny_network()
    image = torch.randn(1, 4, 16, 16, 8, generator=torch.Generator().manual_seed(0))
    [case] = explain_cases(net, image, ["case001"], top_k=3, labels=[0])
    catalogue = prototype_catalogue(net, torch.rand(30))
    j = case.scale_prototypes[1]
    fig = case_figure(image[0], case, catalogue, {j: _source()})
    assert len(fig.axes) == 4 * (1 + len(net.scales))
    texts = "\n".join(_texts(fig))
    sim, weight, contribution = (
        float(case.similarities[j]),
        float(net.classifier.weight[1, j].detach()),
        case.contributions[1, j],
    )
    assert f"HGG: {sim:.2f} × {weight:+.2f} = {float(contribution):+.2f}" in texts  # Fig. 5's annotation
    assert "source patch\nnot available" in texts  # scales 1 and 3 have no source
    assert any(ax.get_title() == "source: src001" for ax in fig.axes)
    assert "label: LGG" in texts


def test_gallery_draws_each_prototypes_box_on_its_source_slice(tmp_path):
    net = build_network("um_protoshare", **{**TINY_NET, "prototypes_per_scale": (2, 2, 1)})
    catalogue = prototype_catalogue(net)
    fig = prototype_gallery({0: _source(), 4: _source("src002")}, catalogue)
    assert len(fig.axes) == 5 * 4
    first = fig.axes[0]
    [box] = [p for p in first.patches if isinstance(p, Rectangle)]
    shown = first.images[0].get_array()
    rows, cols = np.indices(shown.shape)
    x, y = box.get_xy()
    inside = (cols > x) & (cols < x + box.get_width()) & (rows > y) & (rows < y + box.get_height())
    assert np.array_equal(inside, np.asarray(shown) > 0.5)  # the rectangle frames exactly the bright box
    assert "s1 k0 ← src001" in first.get_title()
    assert "not pushed" in "\n".join(_texts(fig))
    path = save_figure(fig, tmp_path / "gallery.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
