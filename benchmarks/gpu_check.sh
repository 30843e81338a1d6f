#!/usr/bin/env bash
# GPU check (issue 11 item 6): the full-size training step of UM-ProtoShare E2 and MProtoNet at batch 32 with bf16
# autocast and channels_last_3d on one CUDA GPU (H100/H200/A100), images/s, peak GPU memory, achieved TFLOP/s, and
# the estimated wall time of the full 5-fold schedule (driver: benchmarks/bench_schedule.py). Installs nothing;
# designed for one call of at most 8 minutes (the driver skips models once --budget-s is spent; `timeout` stops it).
#
#   benchmarks/gpu_check.sh                      # on the CUDA machine
#   CUDA_VISIBLE_DEVICES= benchmarks/gpu_check.sh --dry-run   # anywhere: CPU, tiny sizes, checks the logic
#   benchmarks/gpu_check.sh --fold               # issue 25: one measured fold of E2 end to end (benchmarks/gpu_fold.py:
#                                                # 369-case cohort, a short W,L,P,C = 3,4,2,2 schedule, extrapolated)
#   benchmarks/gpu_check.sh --fold --dry-run     # anywhere: the same fold on CPU at tiny size
#
# Extra arguments go to bench_schedule.py (e.g. --models um_protoshare_e2 --batch 16), or after --fold to gpu_fold.py
# (e.g. --epochs 50,100,10,10 --compile; its JSON is gpu_fold.json). Output: the tables on stdout,
# JSON in benchmarks/results/gpu_check.json and, when $OUT is set (the device runner's return folder), also in
# $OUT/gpu_check.json and $OUT/gpu_check.log. GPU_CHECK_TIMEOUT_S (default 470) bounds the measurement.
set -uo pipefail
cd "$(dirname "$0")/.."

# the first interpreter that imports torch: the project's .venv, else python3 (GPU images put torch there), else python
PY=
for candidate in .venv/bin/python python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import torch" >/dev/null 2>&1; then
        PY=$candidate
        break
    fi
done
if [ -z "$PY" ]; then
    echo "gpu_check: no Python here imports torch (tried .venv/bin/python, python3, python). This script installs" >&2
    echo "  nothing: carry a virtual environment with a CUDA build of torch (plus monai, pytorch-ignite, nibabel) as" >&2
    echo "  .venv, or run it where one is on PATH. Nothing was run." >&2
    exit 3
fi
if ! "$PY" -c "import monai, ignite" >/dev/null 2>&1; then
    echo "gpu_check: monai or pytorch-ignite is not importable with $PY; see requirements.txt. Nothing was run." >&2
    exit 3
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

RESULTS=benchmarks/results/gpu_check.json
COMMAND=(benchmarks/bench_schedule.py --preset paper --models um_protoshare_e2,mprotonet --steps 4 --warm-steps 2
    --push-cases 64 --budget-s 300 --out "$RESULTS")
if [ "${1:-}" = "--fold" ]; then
    shift
    RESULTS=benchmarks/results/gpu_fold.json
    COMMAND=(benchmarks/gpu_fold.py --epochs 3,4,2,2 --processes 16 --push-on-device --out "$RESULTS")
fi
LOG=/dev/null
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
    LOG="$OUT/gpu_check.log"
fi
{
    date -u
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    fi
    timeout "${GPU_CHECK_TIMEOUT_S:-470}" "$PY" "${COMMAND[@]}" "$@"
    status=$?
    [ "$status" -eq 124 ] && echo "gpu_check: stopped by the ${GPU_CHECK_TIMEOUT_S:-470} s timeout; partial results only." >&2
    if [ -n "${OUT:-}" ] && [ -d "$OUT" ] && [ -f "$RESULTS" ]; then
        cp "$RESULTS" "$OUT/$(basename "$RESULTS")"
    fi
    exit "$status"
} 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
