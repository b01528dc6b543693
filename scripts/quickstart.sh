#!/bin/bash
# The CPU quick start: build a small Sudoku dataset from the shipped real puzzles, train a small
# HRM on it for a few minutes, then evaluate the final checkpoint. `bash scripts/quickstart.sh trm`
# trains a small TRM (mlp_t, EMA) instead. Extra arguments go to pretrain.py; DATA and RUN, where
# set, replace the dataset and run folders.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=hrm
if [ "${1:-}" = trm ]; then
  MODEL=trm
  shift
fi
DATA=${DATA:-data/sudoku-quickstart}

# 1000 real Sudoku-Extreme training puzzles and 2000 hard test puzzles, each revealed down to
# 6 blanks so that a small model learns them on a CPU (the full recipe uses the puzzles as they are).
python dataset/build_sudoku_dataset.py --source-repo dataset/samples/sudoku-extreme --output-dir "$DATA" \
  --subsample-size 1000 --num-aug 0 --max-blanks 6

if [ "$MODEL" = trm ]; then
  RUN=${RUN:-checkpoints/quickstart-trm}
  rm -rf "$RUN"
  # TRM's Sudoku recipe (mlp_t, no positions, EMA) at a CPU's size: fewer cycles and ACT steps, and
  # an EMA rate that averages over a few hundred of the few hundred steps.
  python pretrain.py arch=trm data_paths="[$DATA]" checkpoint_path="$RUN" run_name=quickstart-trm wandb.mode=disabled \
    global_batch_size=64 epochs=40 eval_interval=20 lr=1e-3 puzzle_emb_lr=1e-2 lr_warmup_steps=50 ema=True ema_rate=0.99 \
    arch.mlp_t=True arch.pos_encodings=none arch.hidden_size=64 arch.expansion=2 arch.L_layers=2 arch.H_cycles=2 arch.L_cycles=2 \
    arch.halt_max_steps=4 "$@"
else
  RUN=${RUN:-checkpoints/quickstart}
  rm -rf "$RUN"
  python pretrain.py data_path="$DATA" checkpoint_path="$RUN" run_name=quickstart wandb.mode=disabled \
    global_batch_size=64 epochs=40 eval_interval=20 lr=1e-3 puzzle_emb_lr=1e-2 lr_warmup_steps=50 \
    arch.hidden_size=64 arch.num_heads=4 arch.expansion=2 arch.H_layers=2 arch.L_layers=2 arch.halt_max_steps=4 "$@"
fi

python evaluate.py checkpoint="$(ls -v "$RUN"/step_*.pt | tail -n 1)"
