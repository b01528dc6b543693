#!/bin/bash
# One device-machine session: the train-step benchmark for the Sudoku and maze shapes, then a short
# end-to-end GPU run of pretrain.py and evaluate.py on the quick-start data. Results go to $1.
set -uo pipefail
OUT_DIR=${1:?usage: benchmarks/gpu_session.sh OUTPUT_DIR}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT_DIR/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$OUT_DIR/gpu.txt"

for shape in sudoku maze; do
  timeout 150 python3 benchmarks/train_step.py --shape "$shape" --warmup 10 --steps 50 --output "$OUT_DIR/train_step.jsonl" \
    2> "$OUT_DIR/bench_$shape.log"
done

python3 dataset/build_sudoku_dataset.py --source-repo dataset/samples/sudoku-extreme --output-dir data/sudoku-quickstart \
  --subsample-size 1000 --num-aug 0 --max-blanks 6 > /dev/null
timeout 150 python3 pretrain.py data_path=data/sudoku-quickstart checkpoint_path=checkpoints/gpu-smoke wandb.mode=disabled \
  global_batch_size=256 epochs=40 eval_interval=20 lr=3e-4 puzzle_emb_lr=1e-2 lr_warmup_steps=20 > "$OUT_DIR/pretrain.log" 2>&1
cp checkpoints/gpu-smoke/metrics.jsonl "$OUT_DIR/pretrain_metrics.jsonl"
DISABLE_COMPILE=1 timeout 60 python3 evaluate.py checkpoint=checkpoints/gpu-smoke/step_156.pt >> "$OUT_DIR/pretrain.log" 2>&1
tail -n 3 "$OUT_DIR/pretrain.log"
cat "$OUT_DIR/train_step.jsonl"
