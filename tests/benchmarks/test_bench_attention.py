import json

from bench_attention import main


def test_every_gate_convolution_the_attention_and_the_fusion_are_timed_and_agree(tmp_path):
    out = tmp_path / "attention.json"
    assert main(["--preset", "tiny", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    # MAProtoNet at the tiny size: one attentive stage, inputs 1x16x8x8x6, the four gates' pooled maps
    convolutions = result["convolutions"]
    assert [(r["pooled over"], r["run"]) for r in convolutions] == [
        (gate, run) for gate in "CHWD" for run in ("conv3d", "fft")
    ]
    assert [r["input"] for r in convolutions if r["run"] == "fft"] == [
        "1x2x8x8x6",
        "1x2x16x8x6",
        "1x2x8x16x6",
        "1x2x8x8x16",
    ]
    assert all(r["max_rel_error"] < 1e-5 for r in convolutions)
    assert all(r["fwd_ratio"] == r["fwd_bwd_ratio"] == 1.0 for r in convolutions if r["run"] == "conv3d")
    modules = result["modules"]
    assert [(r["input"], r["run"]) for r in modules] == [("1x16x8x8x6", "formula"), ("1x16x8x8x6", "fused")]
    assert modules[1]["max_rel_error"] < 1e-5 and modules[1]["fwd_bwd_ms"] > 0
    fusions = result["fusions"]  # the stem (channels-last from the stem's convolution) and layer1's output
    assert [r["run"] for r in fusions] == ["formula", "library"]
    assert fusions[0]["stem"].startswith("1x4x16x16x12 ") and fusions[0]["stage"].startswith("1x16x8x8x6 ")
    assert fusions[1]["max_rel_error"] < 1e-6 and fusions[1]["fwd_bwd_ms"] > 0
