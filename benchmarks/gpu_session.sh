#!/bin/bash
# One device-machine session of the speed work (docs/performance.md): the GPU tests of the fused
# kernels, the kernel microbenchmark, then the train-step benchmark and a 3-step profile, plain
# PyTorch path against fused kernels, for the Sudoku and maze shapes. Results go to $1.
set -uo pipefail
OUT_DIR=${1:?usage: benchmarks/gpu_session.sh OUTPUT_DIR}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
LOG="$OUT_DIR/gpu_session.log"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$LOG"
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" >> "$LOG"

echo "== GPU tests" >> "$LOG"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_swiglu.py tests/test_kernels_rope_attention.py \
  tests/test_kernels_linear_norm.py tests/test_model_gpu.py >> "$LOG" 2>&1

echo "== kernel microbenchmark" >> "$LOG"
timeout 180 python3 benchmarks/kernels.py --output "$OUT_DIR/kernels.jsonl" >> "$LOG" 2>&1

for shape in sudoku maze; do
  echo "== train step, $shape" >> "$LOG"
  timeout 300 python3 benchmarks/train_step.py --shape "$shape" --warmup 10 --steps 50 --compare unfused,fused \
    --profile "/tmp/profile_$shape" --output "$OUT_DIR/train_step.jsonl" >> "$LOG" 2>&1
  for variant in unfused fused; do
    cp "/tmp/profile_$shape/$variant/top_kernels.txt" "$OUT_DIR/top_kernels_${shape}_$variant.txt" 2>/dev/null
  done
done
grep -E "passed|failed|error" "$LOG" | tail -n 3
cat "$OUT_DIR/kernels.jsonl" "$OUT_DIR/train_step.jsonl" 2>/dev/null | cut -c1-400
