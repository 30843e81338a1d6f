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
