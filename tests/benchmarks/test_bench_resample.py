import json

from bench_resample import main


def test_every_resize_of_a_tiny_step_is_timed_with_both_implementations_and_agrees(tmp_path):
    out = tmp_path / "resample.json"
    assert main(["--device", "cpu", "--preset", "tiny", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    # E2 at the tiny size: the decoder's two ×2 upsamplings, then per scale the mapping loss's two resizes
    decoder = [r for r in rows if r["run"] == "separable" and not r["align_corners"]]
    assert [r["size"] for r in decoder] == ["8x8x6", "16x16x12"]
    assert sum(r["align_corners"] for r in rows if r["run"] == "separable") == 6
    assert {r["run"] for r in rows} == {"interpolate", "separable"}  # no bf16 variant off CUDA
    assert all(r["max_rel_error"] < 1e-5 for r in rows)
    assert [t["run"] for t in result["totals"]] == ["interpolate", "separable"]
    assert result["totals"][0]["ratio"] == 1.0
