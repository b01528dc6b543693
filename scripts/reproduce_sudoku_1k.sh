#!/bin/bash
# Sudoku-Extreme-1k with the paper's recipe on one GPU (or NPROC): build the dataset from the shipped real CSVs,
# train (global batch 768: the same recipe as the original's 8-GPU command), evaluate at every
# eval_interval, plot the curves. Extra arguments go to pretrain.py (e.g. epochs=4000 for a shorter run).
#
#   bash scripts/reproduce_sudoku_1k.sh [key=value ...]
#   NPROC=2 bash scripts/reproduce_sudoku_1k.sh     # the same recipe over 2 GPUs (torchrun)
#
# Outputs: data/sudoku-extreme-1k-aug-1000, checkpoints/reproduce/sudoku-1k/{metrics.jsonl, step_N.pt,
# all_config.yaml}, and checkpoints/reproduce/sudoku-1k/curves.png.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-data/sudoku-extreme-1k-aug-1000}
RUN=${RUN:-checkpoints/reproduce/sudoku-1k}

if [ ! -f "$DATA/identifiers.json" ]; then
  python dataset/build_sudoku_dataset.py --source-repo dataset/samples/sudoku-extreme --output-dir "$DATA" \
    --subsample-size 1000 --num-aug 1000
fi

# NPROC processes (GPUs) split each global batch; the run is the same for any number.
NPROC=${NPROC:-1}
LAUNCH=(python)
if [ "$NPROC" -gt 1 ]; then
  LAUNCH=(python -m torch.distributed.run --standalone --nproc-per-node "$NPROC")
fi

# resume=true: the same command continues an interrupted run from its newest checkpoint.
"${LAUNCH[@]}" pretrain.py data_path="$DATA" checkpoint_path="$RUN" project_name="Sudoku-extreme-1k-aug-1000 ACT-torch" \
  run_name=reproduce-sudoku-1k resume=true keep_checkpoints=2 \
  epochs=20000 eval_interval=2000 lr=1e-4 puzzle_emb_lr=1e-4 weight_decay=1.0 puzzle_emb_weight_decay=1.0 "$@"

python scripts/plot_metrics.py "$RUN/metrics.jsonl" --output "$RUN/curves.png" --title "Sudoku-Extreme-1k, HRM, $NPROC process(es)"
