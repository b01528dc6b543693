#!/bin/bash
# The loss-curve check of a speed lever (docs/performance.md): the first STEPS steps of the Sudoku-1k
# recipe (scripts/reproduce_sudoku_1k.sh; RECIPE=scripts/reproduce_maze_1k.sh for the maze) with the given
# overrides. Two such runs use the same seed, data order and schedule, so their curves differ only by what
# the lever changes:
#
#   bash benchmarks/curve_check.sh checkpoints/curve-check/plain arch.fused_kernels=false
#   bash benchmarks/curve_check.sh checkpoints/curve-check/fused arch.fused_kernels=true
#   python benchmarks/compare_curves.py checkpoints/curve-check/{plain,fused}/metrics.jsonl --steps 200 --plot curves.png
#
# ARCH=trm trains TRM instead, with the keys of its Sudoku recipe (mlp_t, no positions, 2 layers, H/L
# cycles 3/6, its epochs and evaluation interval) in front of the given overrides:
#
#   ARCH=trm bash benchmarks/curve_check.sh checkpoints/curve-check/trm-plain
#   ARCH=trm bash benchmarks/curve_check.sh checkpoints/curve-check/trm-left 'arch.fused_kernels=[mlp_t_left]'
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:?usage: [ARCH=hrm|trm] [STEPS=200] benchmarks/curve_check.sh RUN_FOLDER [key=value ...]}
STEPS=${STEPS:-200}
RECIPE=${RECIPE:-scripts/reproduce_sudoku_1k.sh}
case ${ARCH:-hrm} in
  hrm) ARCH_OVERRIDES=() ;;
  trm) ARCH_OVERRIDES=(arch=trm arch.mlp_t=true arch.pos_encodings=none arch.L_layers=2 arch.H_cycles=3 arch.L_cycles=6
                       epochs=50000 eval_interval=5000) ;;
  *) echo "ARCH=$ARCH: use hrm or trm" >&2; exit 2 ;;
esac

rm -rf "$RUN"
# Its own process group, so that stopping it stops pretrain.py too.
RUN="$RUN" setsid bash "$RECIPE" "${ARCH_OVERRIDES[@]}" "${@:2}" &
TRAINING=$!
# However this script ends (done, failed, or stopped by timeout or Ctrl-C), the run stops with it
# (it may have finished on its own).
trap 'kill -- -$TRAINING 2>/dev/null || true; wait $TRAINING 2>/dev/null || true' EXIT
trap 'exit 143' TERM INT
# The metrics file gains one line per step; stop the run once it holds STEPS of them.
until [ -f "$RUN/metrics.jsonl" ] && [ "$(grep -c train/lm_loss "$RUN/metrics.jsonl")" -ge "$STEPS" ]; do
  kill -0 $TRAINING 2>/dev/null || { echo "the run in $RUN stopped before step $STEPS" >&2; exit 1; }
  sleep 2
done
echo "$RUN: $STEPS steps in $RUN/metrics.jsonl"
