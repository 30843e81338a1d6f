import json

import pytest
from profile_step import main, parse_lambdas


def test_profile_of_a_tiny_stage1_step_lists_its_operators(tmp_path):
    out = tmp_path / "profile.json"
    assert (
        main(
            ["--device", "cpu", "--preset", "tiny", "--steps", "1", "--warm-steps", "1", "--top", "5"]
            + ["--lambda", "map=0", "--out", str(out)]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["stage"] == "latent" and result["lambdas"] == {"lambda_map": 0.0}
    times = [op["self_ms_per_step"] for op in result["ops"]]
    assert len(times) == 5 and times == sorted(times, reverse=True)
    assert any("convolution" in op["name"] for op in result["ops"])
    assert 0 < sum(op["share_of_step"] for op in result["ops"]) <= 1.0


def test_lambda_needs_name_and_value():
    assert parse_lambdas(["map=0.5", "oc=0"]) == {"lambda_map": 0.5, "lambda_oc": 0.0}
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        parse_lambdas(["map"])


def test_components_charge_each_part_once_and_leave_the_network_as_it_was(tmp_path):
    out = tmp_path / "components.json"
    argv = ["--components", "--preset", "tiny", "--threads", "1", "--steps", "1", "--reference-kernels"]
    assert main(argv + ["--out", str(out)]) == 0
    result = json.loads(out.read_text())
    entry = result["threads_1"]
    parts = entry["parts_ms"]
    for part in ("encoder", "decoder", "fusion", "add-ons", "mapping modules", "Online-CAM head", "mapping loss"):
        assert parts[f"{part} fwd"] > 0 and parts[f"{part} bwd"] > 0, part
    assert parts["optimiser"] > 0
    # every operator is charged to one part at most: the parts add up to no more than the profiled step
    attributed = sum(ms for name, ms in parts.items() if name != "Python, dispatch, rest")
    assert 0 < attributed <= entry["profiled_step_ms"]
    assert entry["fast kernels x_encoder"] > 0 and entry["reference kernels x_encoder"] > 0


def test_component_ranges_are_removed_after_the_block():
    from profile_step import component_ranges

    from monai_protoshare.losses import LatentSpaceLoss
    from monai_protoshare.networks import build_network, protonet

    net = build_network("um_protoshare_e2", encoder_layers=(1, 1), encoder_widths=(4, 8), embedding_dim=8)
    descriptors = protonet.masked_descriptors
    with component_ranges(net, LatentSpaceLoss()):
        assert "hidden" in vars(net.mapping_heads[0]) and protonet.masked_descriptors is not descriptors
    assert "hidden" not in vars(net.mapping_heads[0]) and "_online_cam_logits" not in vars(net)
    assert protonet.masked_descriptors is descriptors
    assert not net.add_ons[0]._forward_hooks and not net.add_ons[0]._forward_pre_hooks
