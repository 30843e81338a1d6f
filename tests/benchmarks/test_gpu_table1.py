"""benchmarks/gpu_table1.sh: its dry run plans every Table-1 fold and the same tuning grid for each mapping model."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _dry_run(stage: str) -> str:
    env = {**os.environ, "DRY_RUN": "1", "PY": sys.executable}
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_table1.sh"), stage], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_table1_plan_and_tuning_grids():
    plan = _dry_run("table1").splitlines()
    assert plan[-1].startswith("61 folds, 8 at a time")  # 2 rows x 5 folds + 17 rows x 3 folds
    assert (
        "um_protoshare fold 4: train + evaluate" in plan and "cnn_gradcampp fold 2: evaluate (cnn's checkpoint)" in plan
    )
    tune = _dry_run("tune").splitlines()
    assert len(tune) == 4
    grids = [line.split("--grid ")[1].split(" --fold")[0] for line in tune]
    assert all(g.count("0.1,0.5") == 1 and g.count("=1,30") == 1 and "lambda_map=0.5,5" in g for g in grids)
    seg = _dry_run("seg").splitlines()
    assert [line.split("--bundles ")[1].split()[0] for line in seg] == ["proto_seg", "segresnet"]
