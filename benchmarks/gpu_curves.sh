#!/usr/bin/env bash
# Learning curves of several variants at once on one GPU machine: each variant is its own process
# (benchmarks/learning_curve.py on cuda, one loader worker), all on the same synthetic set. On a GPU
# the small synthetic models are bound by the Python step and the loader, not the GPU, so running them
# side by side costs each little; compare them by samples seen, not by wall time.
#
#     bash benchmarks/gpu_curves.sh                                   # the variants below, 300 s each
#     CURVE_VARIANTS="plain cells_s16" CURVE_BUDGET_S=480 bash benchmarks/gpu_curves.sh
#
# Writes learning_curve_<variant>.json (rewritten after every epoch) and <variant>.log to
# ${OUT:-benchmarks/results}/curves. Generates the variants' 2,000-image synthetic set into
# data/synthetic_2000 when it is missing (once, before the variants start side by side).
set -uo pipefail

cd "$(dirname "$0")/.."
RESULTS="${OUT:-benchmarks/results}/curves"
PYTHON="${PYTHON:-python3}"
BUDGET_S="${CURVE_BUDGET_S:-300}"
MAX_EPOCHS="${CURVE_MAX_EPOCHS:-40}"
DEVICE="${CURVE_DEVICE:-cuda}"
EXTRA=()  # CURVE_SET="train.max_steps_per_epoch=2 ...": more overrides for every variant
for setting in ${CURVE_SET:-}; do EXTRA+=(--set "$setting"); done
VARIANTS="${CURVE_VARIANTS:-plain cells_s16_noise cells_s16_mask cells_s16_mask_noise cells_s16_mask_noise40
 cells_s16_mask_noise_lr2 cells_s16_mask_noise_dec2 cells_s16_multi cells_s16_multi_noise}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1

mkdir -p "$RESULTS"
if [[ ! -f data/synthetic_2000/annotations/synthetic/instances.json ]]; then
    "$PYTHON" -m seqtr_lib make-synthetic --out data/synthetic_2000 --num-images 2000 --workers 8 || exit 1
fi
# Validation, the first epoch and the last can overrun the training budget: stop a straggler well after.
LIMIT_S=$((BUDGET_S + 120))
for variant in $VARIANTS; do
    timeout --kill-after=10 "$LIMIT_S" "$PYTHON" benchmarks/learning_curve.py --variant "$variant" \
        --budget-s "$BUDGET_S" --max-epochs "$MAX_EPOCHS" --results "$RESULTS" --no-plot \
        --set "train.device=$DEVICE" --set data.num_workers=1 "${EXTRA[@]}" >"$RESULTS/$variant.log" 2>&1 &
done
wait
for variant in $VARIANTS; do
    echo "== $variant"
    tr '\r' '\n' <"$RESULTS/$variant.log" | grep -a "^$variant: epoch" | tail -n 4
    grep -a -E "Error|error:" "$RESULTS/$variant.log" | tail -n 3
done
