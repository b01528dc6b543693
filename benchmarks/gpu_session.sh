#!/bin/bash
# GPU measurements in stages (docs/performance.md):
#   tests    the GPU tests of the fused kernels, the attention backends and the model
#   kernels  the layer-kernel microbenchmark (benchmarks/kernels.py): quack's matrix products and the
#            fused block's, and every attention kernel that runs, at the training shapes
#   sudoku   the train-step benchmark and a 3-step profile of each variant in VARIANTS (default
#            unfused,fused: the plain PyTorch path against the fused kernels) of the model ARCH (hrm or
#            trm, default hrm) with the config overrides OVERRIDES (e.g. arch.no_ACT_continue=true)
#   maze     the same for the maze shape
#   autotune the Sudoku step compiled with mode max-autotune-no-cudagraphs (Triton matmul templates)
#   maze-accum the maze recipe's global batch 768 as 2 and as 4 micro-batches (gradient_accumulation_steps):
#            step time and peak memory, i.e. whether the Maze-1k recipe fits an 80 GB GPU
#   scaling  the Sudoku and maze steps (SCALING_SHAPES, default "sudoku maze") in one process, then over
#            2 GPUs with torchrun at the same global batch (on a two-GPU machine)
#   curve    the 200-step loss-curve check of the fused kernels against the plain path (Sudoku-1k recipe;
#            ARCH=trm: TRM's)
#   sudoku-run the Sudoku-Extreme-1k recipe (scripts/reproduce_sudoku_1k.sh) until it is stopped;
#            SUDOKU_RUN_ARGS holds extra overrides (e.g. arch.fused_kernels=true)
#   maze-run the Maze-30x30-Hard-1k recipe (scripts/reproduce_maze_1k.sh, evaluating every 100 epochs)
#            until it is stopped; MAZE_SOURCE names a local folder of the maze CSVs (no network),
#            MAZE_RUN_ARGS replaces the extra overrides (default eval_interval=100), NPROC spreads it over GPUs
# Usage: benchmarks/gpu_session.sh OUTPUT_DIR [STAGE ...]   (default: tests kernels sudoku maze)
set -uo pipefail
OUT_DIR=${1:?usage: benchmarks/gpu_session.sh OUTPUT_DIR [STAGE ...]}
shift
STAGES=${*:-tests kernels sudoku maze}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
LOG="$OUT_DIR/gpu_session.log"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$LOG"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$LOG"

for stage in $STAGES; do
  echo "== $stage $(date +%T)" >> "$LOG"
  case $stage in
    tests)
      timeout 600 python3 -m pytest -q -p no:cacheprovider tests/test_fused_block.py tests/test_fused_mlp.py \
        tests/test_fused_model.py tests/test_fused_trm.py tests/test_attention.py tests/test_model_gpu.py tests/test_model_trm_gpu.py \
        >> "$LOG" 2>&1 ;;
    kernels)
      timeout 420 python3 benchmarks/kernels.py --output "$OUT_DIR/kernels.jsonl" >> "$LOG" 2>&1 ;;
    sudoku | maze)
      variants=${VARIANTS:-unfused,fused}
      timeout 420 python3 benchmarks/train_step.py --arch "${ARCH:-hrm}" --shape "$stage" --warmup 10 --steps 50 --compare "$variants" \
        ${OVERRIDES:+--override $OVERRIDES} --profile "/tmp/profile_$stage" --output "$OUT_DIR/train_step.jsonl" >> "$LOG" 2>&1
      for variant in ${variants//,/ }; do
        folder=${variant//+/_}  # the benchmark's folder name for the variant
        cp "/tmp/profile_$stage/$folder/top_kernels.txt" "$OUT_DIR/top_kernels_${stage}_$folder.txt" 2>/dev/null
      done ;;
    autotune)
      timeout 300 python3 benchmarks/train_step.py --shape sudoku --warmup 10 --steps 50 \
        --compare compile-max-autotune-no-cudagraphs --output "$OUT_DIR/train_step.jsonl" >> "$LOG" 2>&1 ;;
    maze-accum)
      for steps in 2 4; do
        timeout 300 python3 benchmarks/train_step.py --shape maze --batch 768 --gradient-accumulation-steps $steps --warmup 3 \
          --steps 10 --output "$OUT_DIR/train_step.jsonl" >> "$LOG" 2>&1
      done ;;
    scaling)
      for shape in ${SCALING_SHAPES:-sudoku maze}; do
        timeout 300 python3 benchmarks/train_step.py --shape $shape --output "$OUT_DIR/train_step.jsonl" >> "$LOG" 2>&1
        timeout 300 python3 -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/train_step.py --shape $shape \
          --output "$OUT_DIR/train_step.jsonl" >> "$LOG" 2>&1
      done ;;
    curve)
      for path in plain fused; do
        flag=$([ $path = fused ] && echo true || echo false)
        timeout 300 bash benchmarks/curve_check.sh "checkpoints/curve-check/$path" wandb.mode=disabled \
          arch.fused_kernels=$flag >> "$LOG" 2>&1
        cp "checkpoints/curve-check/$path/metrics.jsonl" "$OUT_DIR/curve_$path.jsonl"
      done
      python3 benchmarks/compare_curves.py "$OUT_DIR/curve_plain.jsonl" "$OUT_DIR/curve_fused.jsonl" --steps 200 \
        > "$OUT_DIR/curve_comparison.json" 2>> "$LOG" ;;
    sudoku-run)
      bash scripts/reproduce_sudoku_1k.sh wandb.mode=disabled ${SUDOKU_RUN_ARGS:-} >> "$OUT_DIR/sudoku_run.log" 2>&1 ;;
    maze-run)
      PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True SOURCE=${MAZE_SOURCE:-sapientinc/maze-30x30-hard-1k} \
        bash scripts/reproduce_maze_1k.sh wandb.mode=disabled ${MAZE_RUN_ARGS:-eval_interval=100} >> "$OUT_DIR/maze_run.log" 2>&1 ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
echo "== done $(date +%T)" >> "$LOG"
grep -E "passed|failed|error|Error" "$LOG" | tail -n 5
for file in kernels.jsonl train_step.jsonl; do
  [ -f "$OUT_DIR/$file" ] && python3 -c "
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print({k: r[k] for k in r if k in ('arch', 'overrides', 'shape', 'kernel', 'variant', 'fused_us', 'pytorch_compiled_us', 'speedup', 'relative_error',
          'forward_us', 'forward_backward_us', 'out_relative_error', 'attention_backend',
          'step_ms_median', 'step_ms_p90', 'peak_memory_gib', 'compile_seconds', 'fused_kernel', 'error')})" "$OUT_DIR/$file"
done
