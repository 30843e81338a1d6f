import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from monai_protoshare.explain.push import map_mass_box, push_prototypes
from monai_protoshare.networks import build_network
from tests.toy_data import TINY_NET, ToyCases


def _push(name):
    torch.manual_seed(0)
    net = build_network(name, **TINY_NET)
    data = ToyCases(6)
    result = push_prototypes(net, DataLoader(data, batch_size=4), "cpu", epoch=7)
    return net, data, result


def _descriptor_of(net, data, subject, scale_index, k):
    index = int(subject[3:])
    net.eval()  # the push runs BN in eval mode
    with torch.no_grad():
        out = net.explain(data[index]["image"][None], online_cam=False)
    return out.descriptors[scale_index][0, k]


def test_push_sets_each_prototype_to_its_recorded_cases_descriptor():
    for name in ("um_protoshare", "protopnet"):
        net, data, result = _push(name)
        ids = net.prototypes.source_ids()
        assert ids == result.subject_ids and all(ids)
        for j, record in enumerate(net.prototypes.provenance()):
            desc = _descriptor_of(net, data, record["source_subject_id"], record["scale_index"], record["index"])
            p = net.prototypes.vectors[record["scale_index"]][record["index"]]
            assert F.cosine_similarity(desc, p, dim=0).item() > 1 - 1e-5, (name, j)
            assert record["push_epoch"] == 7


def test_push_picks_the_best_case_and_respects_class_ownership():
    torch.manual_seed(0)
    net = build_network("mprotonet", **TINY_NET)
    data = ToyCases(6)
    net.eval()
    with torch.no_grad():
        out = net.explain(data.images, online_cam=False)
    sims = F.cosine_similarity(out.descriptors[0], net.prototypes.vectors[0][None], dim=-1)  # (N, K)
    identity = net.prototype_class_identity
    sims = sims.masked_fill(identity[data.labels] == 0, -2.0)
    expected = [f"toy{i:03d}" for i in sims.argmax(0).tolist()]
    push_prototypes(net, DataLoader(data, batch_size=4), "cpu")
    assert net.prototypes.source_ids() == expected
    owners = identity.argmax(0)
    for j, sid in enumerate(expected):
        assert data.labels[int(sid[3:])] == owners[j]


def test_map_mass_box_in_input_voxels():
    m = torch.zeros(4, 4, 3)
    m[1:3, 2, 0:2] = 1.0
    m[0, 0, 0] = 0.2  # below half the maximum
    box = map_mass_box(m, (16, 16, 12))
    assert box.tolist() == [4, 8, 0, 12, 12, 8]


@pytest.mark.parametrize("name", ["um_protoshare", "protopnet", "xprotonet", "mprotonet", "maprotonet"])
def test_cached_similarities_equal_a_fresh_eval_forward(name):
    # stage 3 with classifier_inputs: cached trains on PushResult.similarities: they must be the similarities the
    # pushed network gives at inference (ProtoPNet's best-matching voxels move with its prototypes)
    torch.manual_seed(0)
    net = build_network(
        name, **(TINY_NET | ({"encoder_layers": (1,), "encoder_widths": (4,)} if name == "maprotonet" else {}))
    )
    data = ToyCases(6)
    result = push_prototypes(net.train(), DataLoader(data, batch_size=4), "cpu")
    assert net.training  # the push restores the mode
    net.eval()
    with torch.no_grad():
        fresh = net.explain(data.images, online_cam=False).similarities
    assert torch.allclose(result.similarities, fresh, atol=1e-6), (result.similarities - fresh).abs().max()
    assert torch.equal(result.labels, data.labels)


def test_push_restores_each_submodules_own_mode():
    # stage 1 trains the network with its decoder frozen in eval mode: the push must give that state back
    torch.manual_seed(0)
    net = build_network("um_protoshare", **TINY_NET).train()
    net.backbone.decoder.eval()
    push_prototypes(net, DataLoader(ToyCases(8, seed=3), batch_size=4), "cpu")
    assert net.training and net.prototypes.training and not net.backbone.decoder.training
    assert not any(m.training for m in net.backbone.decoder.modules())
