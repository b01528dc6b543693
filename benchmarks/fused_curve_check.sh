#!/bin/bash
# The loss-curve check of the fused kernels (docs/performance.md): the first STEPS steps of the
# Sudoku-1k recipe (scripts/reproduce_sudoku_1k.sh) on the plain PyTorch path, arch.fused_kernels=false.
# Compare with the recipe run on the fused path, which uses the same seed, data order and schedule:
#
#   bash benchmarks/fused_curve_check.sh checkpoints/curve-check/plain
#   python benchmarks/compare_curves.py checkpoints/curve-check/plain/metrics.jsonl \
#       checkpoints/reproduce/sudoku-1k/metrics.jsonl --steps 200 --plot curves.png
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:?usage: benchmarks/fused_curve_check.sh RUN_FOLDER}
STEPS=${STEPS:-200}
DATA=${DATA:-data/sudoku-extreme-1k-aug-1000}

if [ ! -f "$DATA/identifiers.json" ]; then
  python dataset/build_sudoku_dataset.py --source-repo dataset/samples/sudoku-extreme --output-dir "$DATA" \
    --subsample-size 1000 --num-aug 1000
fi
rm -rf "$RUN"
python pretrain.py data_path="$DATA" checkpoint_path="$RUN" run_name=curve-check arch.fused_kernels=false \
  epochs=20000 eval_interval=2000 lr=1e-4 puzzle_emb_lr=1e-4 weight_decay=1.0 puzzle_emb_weight_decay=1.0 "${@:2}" &
TRAINING=$!
# The metrics file gains one line per step; stop the run once it holds STEPS of them.
until [ -f "$RUN/metrics.jsonl" ] && [ "$(grep -c train/lm_loss "$RUN/metrics.jsonl")" -ge "$STEPS" ]; do
  kill -0 $TRAINING 2>/dev/null || { echo "the plain run stopped before step $STEPS" >&2; exit 1; }
  sleep 2
done
kill $TRAINING
wait $TRAINING 2>/dev/null || true
echo "plain run: $STEPS steps in $RUN/metrics.jsonl"
