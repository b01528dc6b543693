#!/bin/bash
# Maze-30x30-Hard-1k with the paper's recipe on one GPU (or NPROC): build the dataset (the 1000 real training mazes
# and 1000 test mazes), train (global batch 768: the same recipe as the original's 8-GPU command), evaluate at
# every eval_interval, plot the curves. Extra arguments go to pretrain.py (e.g. eval_interval=200 for more
# frequent evaluations). Global batch 768 of 900-cell mazes needs more memory than an 80 GB GPU has:
# there, add gradient_accumulation_steps=2.
#
#   bash scripts/reproduce_maze_1k.sh [key=value ...]
#   SOURCE=path/to/folder/with/train.csv/and/test.csv bash scripts/reproduce_maze_1k.sh   # no network
#   NPROC=2 bash scripts/reproduce_maze_1k.sh      # the same recipe over 2 GPUs (torchrun)
#   bash scripts/reproduce_maze_1k.sh gradient_accumulation_steps=2   # on an 80 GB GPU
#
# Outputs: data/maze-30x30-hard-1k, checkpoints/reproduce/maze-1k/{metrics.jsonl, step_N.pt,
# all_config.yaml}, and checkpoints/reproduce/maze-1k/curves.png.
set -euo pipefail
cd "$(dirname "$0")/.."

SOURCE=${SOURCE:-sapientinc/maze-30x30-hard-1k}
DATA=${DATA:-data/maze-30x30-hard-1k}
RUN=${RUN:-checkpoints/reproduce/maze-1k}

if [ ! -f "$DATA/identifiers.json" ]; then
  python dataset/build_maze_dataset.py --source-repo "$SOURCE" --output-dir "$DATA"
fi

# NPROC processes (GPUs) split each global batch; the run is the same for any number.
NPROC=${NPROC:-1}
LAUNCH=(python)
if [ "$NPROC" -gt 1 ]; then
  LAUNCH=(python -m torch.distributed.run --standalone --nproc-per-node "$NPROC")
fi

# resume=true: the same command continues an interrupted run from its newest checkpoint.
"${LAUNCH[@]}" pretrain.py data_path="$DATA" checkpoint_path="$RUN" project_name="Maze-30x30-hard-1k ACT-torch" \
  run_name=reproduce-maze-1k resume=true keep_checkpoints=2 \
  epochs=20000 eval_interval=2000 lr=1e-4 puzzle_emb_lr=1e-4 weight_decay=1.0 puzzle_emb_weight_decay=1.0 "$@"

python scripts/plot_metrics.py "$RUN/metrics.jsonl" --output "$RUN/curves.png" --title "Maze-30x30-Hard-1k, HRM, $NPROC process(es)"
