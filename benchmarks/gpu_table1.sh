#!/usr/bin/env bash
# The synthetic Table 1 (issue 20) on one lent GPU machine, in two short calls:
#
#   bash benchmarks/gpu_table1.sh tune     # cpu_small's map knobs of the four mapping models on an inner split
#   bash benchmarks/gpu_table1.sh table1   # every Table-1 row (crossval --table1), JOBS folds at once
#   bash benchmarks/gpu_table1.sh seg      # the segmentation table (proto_seg, segresnet; 3 folds, pruning)
#
# `DRY_RUN=1 bash benchmarks/gpu_table1.sh table1` prints the plan and checks every bundle file, on any machine.
# The `cpu_small` preset is small enough that one fold leaves an H100 mostly idle, so JOBS folds share it (each
# worker gets cpus/JOBS threads for its data loading). Between the two calls, copy the chosen values of each
# `$OUT/tune/<bundle>/tuning.json` into `bundles/<bundle>/configs/presets/cpu_small.yaml`, naming the record, and
# commit them: the table must run on the committed presets. Afterwards:
#   python docs/write_numbers.py table1 $OUT/cv      # the README's Table-1 block and docs/results/table1.json
#   python docs/write_numbers.py seg $OUT/seg
# (SegResNet's full-resolution 8-channel convolutions take about 8 s a cpu_small step on one CPU thread, about
# 100 min a fold: its table wants the GPU.)
set -euo pipefail

STAGE=${1:?usage: gpu_table1.sh tune|table1|seg}
OUT=${OUT:-outputs/gpu_table1}
JOBS=${JOBS:-8}
PY=${PY:-python}
COHORT=$OUT/cohort
# the demo's cohort: 100 cases of version 3, 40 % LGG, seed 0 (5 folds of 20 held-out cases)
if [[ ${DRY_RUN:-0} != 1 && ! -f $COHORT/synthetic_cohort.json ]]; then
    $PY -m monai_protoshare.data.synthetic --out "$COHORT" --cases 100 --seed 0 --lgg-fraction 0.4
fi

case $STAGE in
tune)
    # the same three knobs and grid for every model with a mapping module (tune.py's docstring lists the ids):
    # the maps' initial coverage, their BN shift's learning-rate factor, the mapping-loss weight
    for bundle in um_protoshare xprotonet mprotonet maprotonet; do
        if [[ $bundle == um_protoshare ]]; then prior=mask_prior shift=mask_shift_lr_factor
        else prior=network_def#mask_prior shift=train#trainer#mask_shift_lr_factor; fi
        cmd=($PY -m monai_protoshare.workflows.tune --dataset_dir "$COHORT" --bundle $bundle --preset cpu_small
            --grid "$prior=0.1,0.5" "$shift=1,30" lambda_map=0.5,5 --fold 0 --output_dir "$OUT/tune/$bundle")
        if [[ ${DRY_RUN:-0} == 1 ]]; then echo "${cmd[*]}"; else "${cmd[@]}" > "$OUT/tune_$bundle.log" 2>&1 & fi
    done
    wait
    ;;
table1)
    dry=()
    [[ ${DRY_RUN:-0} == 1 ]] && dry=(--dry_run)
    $PY -m monai_protoshare.workflows.crossval --dataset_dir "$COHORT" --table1 --preset cpu_small \
        --jobs "$JOBS" --output_dir "$OUT/cv" "${dry[@]}"
    ;;
seg)
    # one runner per bundle, both on the GPU at once
    for bundle in proto_seg segresnet; do
        cmd=($PY -m monai_protoshare.workflows.seg_table --dataset_dir "$COHORT" --bundles $bundle --folds 0-2 --prune
            --preset cpu_small --output_dir "$OUT/seg")
        if [[ ${DRY_RUN:-0} == 1 ]]; then echo "${cmd[*]}"; else "${cmd[@]}" > "$OUT/seg_$bundle.log" 2>&1 & fi
    done
    wait
    [[ ${DRY_RUN:-0} == 1 ]] || $PY -m monai_protoshare.workflows.seg_table --dataset_dir "$COHORT" --table_only \
        --output_dir "$OUT/seg"
    ;;
*)
    echo "unknown stage '$STAGE': use tune, table1 or seg" >&2
    exit 2
    ;;
esac
