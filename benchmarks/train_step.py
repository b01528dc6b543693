"""Benchmark the real training step: the model, optimisers and step that pretrain.py builds and runs,
on synthetic batches of a named shape.

    python benchmarks/train_step.py --shape sudoku
    python benchmarks/train_step.py --shape maze --compare eager,compile,compile-max-autotune-no-cudagraphs
    python benchmarks/train_step.py --arch trm --shape sudoku --compare default,cuda-graphs,mlp_t-left+cuda-graphs
    python benchmarks/train_step.py --shape sudoku --override arch.no_ACT_continue=true   # HRM in one segment per step
    python benchmarks/train_step.py --shape sudoku --profile profiles/sudoku
    python benchmarks/train_step.py --shape maze --batch 768 --gradient-accumulation-steps 2   # micro-batches of 384
    torchrun --nproc-per-node 2 benchmarks/train_step.py --shape sudoku   # the same global batch over 2 GPUs
    python benchmarks/train_step.py --shape tiny --steps 3 --warmup 1      # CPU-sized, for CI

Prints one JSON line per variant on stdout (everything else goes to stderr): compile time (the first
step), median and p90 step time, tokens/s, analytic FLOPs, achieved TFLOP/s and fraction of peak,
peak memory (over the whole variant, warm-up included: CUDA graphs take their memory when they are
recorded, in the warm-up, and their replays allocate nothing), and the time of the per-step check for
non-finite weights (weight_check_ms, timed alone; the step times include it). Under torchrun every
process takes its slice of each global batch, as in training; rank 0 reports its step times and
memory, and the FLOP rate over all GPUs together.
--arch picks the model (hrm, or trm: TRM's Sudoku recipe) and --override sets any config key as
pretrain.py's command line does. A variant is one or more parts joined by '+':
    default                       as training runs: compiled on CUDA (unless DISABLE_COMPILE), eager on CPU
    eager | compile               torch.compile off | on (the training code path, config.compile)
    compile-<mode>                torch.compile with a mode, e.g. compile-max-autotune-no-cudagraphs
    cuda-graphs                   compiled and replayed as CUDA graphs (config.cuda_graphs, mode reduce-overhead)
    sdpa-flash | sdpa-cudnn | sdpa-efficient | sdpa-math
                                  attention through PyTorch SDPA with only that kernel allowed
    flash-attn-2 | flash-attn-3 | flash-attn-4
                                  attention through that FlashAttention package (it must be installed)
    fused | unfused               every fused kernel family of models/fused (as arch.fused_kernels=true:
                                  the whole block of the gradient-free passes and the MLP of the passes
                                  with gradient in quack epilogues) | none (the original's computation
                                  path); with quack, add cuda-graphs: its launches are slow on the host
    fused-block                   the families of the gradient-free passes only: the block, else the
                                  SwiGLU (the MLP of the passes with gradient on the PyTorch path)
    fused-swiglu                  only the SwiGLU of the gradient-free passes
    mlp_t-padded | mlp_t-left     TRM's mlp_t over its position axis padded to a multiple of 16 | with its
                                  weights applied from the left, without transposes (models/fused/mlp_t.py);
                                  they add to the fused parts, e.g. fused+mlp_t-left
e.g. `--compare eager,compile,compile+sdpa-cudnn`. Variants run one after another in one process, each
on a freshly built train state, so their ratios are measured side by side.

compile_seconds is the first step's wall time. Inductor caches compiled kernels on disk, so it is the
cold compile time only on a fresh machine or with TORCHINDUCTOR_FORCE_DISABLE_CACHES=1.
"""

import argparse
import contextlib
import gc
import json
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

# Run as `python benchmarks/train_step.py`, Python puts benchmarks/ on the import path, not the
# repository root that holds pretrain.py, models/ and utils/.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import pretrain  # noqa: E402
from dataset.common import PuzzleDatasetMetadata  # noqa: E402
from models import attention  # noqa: E402
from models.fused import FAMILIES, apply_fused_kernels, fused_kernels_in_use  # noqa: E402
from models.layers import Attention  # noqa: E402
from models.losses import IGNORE_LABEL_ID  # noqa: E402
from models.recursive_reasoning.trm import TinyRecursiveReasoningModel_ACTV1_Inner  # noqa: E402
from utils.config import ConfigError, PretrainConfig, check_world_size, environment_overrides, load_config, validate_config  # noqa: E402
from utils.distributed import DistributedContext, distributed_session, end_process  # noqa: E402
from utils.finite import any_non_finite  # noqa: E402

# Dense bf16 matrix-product rate measured on one H100 80GB (8192^3 products); the H200 has the same
# compute. Other devices have no default: pass --peak-tflops.
HOPPER_PEAK_TFLOPS = 798.0

PROFILED_STEPS = 3  # keeps the gzipped chrome trace of the default shapes to a few MB
NUM_BATCHES = 8  # distinct synthetic batches, used in turn


# Architectures ----------------------------------------------------------------------------------

# The model of each --arch, as its recipe's overrides. HRM's recipes change no arch key. TRM's is its
# Sudoku recipe (the README's `arch=trm ... arch.mlp_t=True arch.pos_encodings=none arch.L_layers=2
# arch.H_cycles=3 arch.L_cycles=6 ema=True`) without the EMA, an elementwise update of the weights
# after the optimiser: --override ema=true adds it.
ARCHS: Dict[str, Tuple[str, ...]] = {
    "hrm": (),
    "trm": ("arch=trm", "arch.mlp_t=true", "arch.pos_encodings=none", "arch.L_layers=2", "arch.H_cycles=3", "arch.L_cycles=6"),
}


# Shapes -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    seq_len: int
    vocab_size: int
    batch: int  # default global batch size
    num_identifiers: int  # default number of puzzle identifiers
    input_tokens: Tuple[int, int]  # inclusive range of input tokens, as the dataset builders write them
    label_tokens: Tuple[int, int]  # inclusive range of label tokens
    ignored_labels: float  # share of labels that are IGNORE_LABEL_ID (unscored padding)
    arch: Tuple[str, ...] = ()  # arch keys of the shape: after the --arch recipe's, before --override


SHAPES: Dict[str, Shape] = {
    # Tokens: PAD 0, blank 1, digit d as d + 1; every cell of the answer is scored.
    "sudoku": Shape(81, 11, batch=768, num_identifiers=1, input_tokens=(1, 10), label_tokens=(2, 10), ignored_labels=0.0),
    # 30x30 grids of wall, open, start, goal, path as 1..5.
    "maze": Shape(900, 6, batch=96, num_identifiers=1, input_tokens=(1, 5), label_tokens=(1, 5), ignored_labels=0.0),
    # 30x30 canvases: PAD 0, end-of-grid 1, colours 2..11; padding outside the output grid is not scored.
    # Batch 96 is one GPU's share of the original's 768 over 8 GPUs; 768 on one GPU needs about 8x the
    # memory of the maze shape.
    "arc": Shape(900, 12, batch=96, num_identifiers=1000, input_tokens=(0, 11), label_tokens=(0, 11), ignored_labels=0.5),
    # Small enough for a CPU in a few seconds (CI), for either --arch: few cycles, and an expansion that
    # keeps TRM's mlp_t over 97 positions at an inner size of 256.
    "tiny": Shape(81, 11, batch=8, num_identifiers=1, input_tokens=(1, 10), label_tokens=(2, 10), ignored_labels=0.0,
                  arch=("hidden_size=64", "num_heads=2", "expansion=2", "H_cycles=2", "L_cycles=2", "H_layers=1", "L_layers=1",
                        "halt_max_steps=2")),
}


def synthetic_batches(shape: Shape, batch_size: int, num_identifiers: int, seed: int = 0) -> List[Dict[str, torch.Tensor]]:
    """Random batches in the shape's token ranges: int32 on the CPU, as the training loader yields them."""
    generator = torch.Generator().manual_seed(seed)

    def tokens(low_high: Tuple[int, int]) -> torch.Tensor:
        return torch.randint(low_high[0], low_high[1] + 1, (batch_size, shape.seq_len), generator=generator, dtype=torch.int32)

    batches = []
    for _ in range(NUM_BATCHES):
        labels = tokens(shape.label_tokens)
        ignored = torch.rand((batch_size, shape.seq_len), generator=generator) < shape.ignored_labels
        batches.append({
            "inputs": tokens(shape.input_tokens),
            "labels": labels.masked_fill(ignored, IGNORE_LABEL_ID),
            "puzzle_identifiers": torch.randint(0, num_identifiers, (batch_size,), generator=generator, dtype=torch.int32),
        })
    return batches


def shape_metadata(shape: Shape, num_identifiers: int) -> PuzzleDatasetMetadata:
    """What a dataset's dataset.json would say; no files are needed."""
    return PuzzleDatasetMetadata(
        pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=shape.vocab_size, seq_len=shape.seq_len,
        num_puzzle_identifiers=num_identifiers, total_groups=1000, mean_puzzle_examples=1, sets=["all"],
    )


# FLOPs ------------------------------------------------------------------------------------------


def module_passes(inner: torch.nn.Module) -> Dict[str, Tuple[int, int]]:
    """Per reasoning module of `inner`, (passes in one segment, passes that backpropagate)."""
    config = inner.config
    if isinstance(inner, TinyRecursiveReasoningModel_ACTV1_Inner):
        # H_cycles recursions of L_cycles latent updates and one answer update; the last with gradient.
        return {"L_level": (config.H_cycles * (config.L_cycles + 1), config.L_cycles + 1)}
    # The one-step gradient: through the last L and the last H update.
    return {"L_level": (config.H_cycles * config.L_cycles, 1), "H_level": (config.H_cycles, 1)}


def train_step_flops(inner: torch.nn.Module) -> int:
    """Matrix-product FLOPs of one training step of `inner` (HRM's or TRM's inner model).

    A block's forward on B sequences of S positions (puzzle positions included), hidden size h:
        2 * B*S * (its weights over channels: qkv + o + gate_up + down)
      + 4 * B * S^2 * h (q.k^T and attn.v), or with TRM's mlp_t, 2 * B*h * (mlp_t's gate_up + down),
        a SwiGLU over the S positions of each of the B*h channels.
    A module pass is its `layers` blocks. One segment runs HRM's H_cycles * L_cycles L passes and
    H_cycles H passes, or TRM's H_cycles * (L_cycles + 1) passes of its one module, then lm_head
    (B*S rows) and q_head (B rows). The training step runs:
      - one segment with grad, whose backward costs 2x the forward of what gets gradients: HRM's last
        L and H pass, TRM's last L_cycles + 1 passes, and the heads;
      - when halt_max_steps > 1 and not no_ACT_continue, one more segment without grad for the
        Q-learning target.
    Norms, RoPE, embeddings, losses and optimisers are elementwise and not counted.
    """
    config = inner.config
    batch, seq = config.batch_size, config.seq_len + inner.puzzle_emb_len
    tokens = batch * seq

    def block_flops(block: torch.nn.Module) -> int:
        # Every parameter of a block is a matrix-product weight: no biases, RMSNorm has no scale.
        over_channels = sum(p.numel() for name, p in block.named_parameters() if not name.startswith("mlp_t."))
        if hasattr(block, "mlp_t"):
            mixing = 2 * batch * config.hidden_size * sum(p.numel() for p in block.mlp_t.parameters())
        else:
            mixing = 4 * batch * seq**2 * config.hidden_size
        return 2 * tokens * over_channels + mixing

    passes = {name: sum(block_flops(block) for block in getattr(inner, name).layers) for name in module_passes(inner)}
    heads = 2 * tokens * inner.lm_head.weight.numel() + 2 * batch * inner.q_head.weight.numel()
    segment = sum(count * passes[name] for name, (count, _) in module_passes(inner).items()) + heads
    with_gradient = sum(count * passes[name] for name, (_, count) in module_passes(inner).items()) + heads

    flops = segment + 2 * with_gradient
    if config.halt_max_steps > 1 and not config.no_ACT_continue:
        flops += segment
    return flops


# Variants ---------------------------------------------------------------------------------------

SDPA_BACKENDS = {
    "sdpa-flash": SDPBackend.FLASH_ATTENTION,
    "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
    "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
    "sdpa-math": SDPBackend.MATH,
}
# Variant names: flash-attn-2, flash-attn-3, flash-attn-4.
FLASH_PACKAGES = {backend.replace("_", "-"): backend for backend in attention.FLASH_BACKENDS}
# Variant names of the fused kernel families (models/fused) they apply.
FUSED_VARIANTS = {"fused": FAMILIES, "fused-block": ("block", "swiglu"), "fused-swiglu": ("swiglu",), "unfused": (),
                  "mlp_t-padded": ("mlp_t_padded",), "mlp_t-left": ("mlp_t_left",)}


@dataclass(frozen=True)
class Variant:
    name: str
    compile: Optional[bool] = None  # None: as training decides
    compile_mode: Optional[str] = None  # a torch.compile mode; None: pretrain.py's own compile
    cuda_graphs: bool = False  # config.cuda_graphs: the compiled step replayed as CUDA graphs
    sdpa_backend: Optional[SDPBackend] = None  # None: the backend models.attention picks
    flash_package: Optional[str] = None  # a FlashAttention backend of models.attention; None: the one it picks
    fused_families: Optional[Tuple[str, ...]] = None  # the models/fused families to apply; None: as arch.fused_kernels says


def parse_variant(name: str) -> Variant:
    compile_modes = list(torch._inductor.list_mode_options())
    compile, compile_mode, sdpa_backend, flash_package, fused_families, cuda_graphs = None, None, None, None, None, False
    for part in name.split("+"):
        if part == "default":
            continue
        if part in FUSED_VARIANTS:
            # Parts add up: fused+mlp_t-left applies the kernel families and the mlp_t layout.
            fused_families = tuple(dict.fromkeys((fused_families or ()) + FUSED_VARIANTS[part]))
        elif part in ("eager", "compile"):
            compile = part == "compile"
        elif part == "cuda-graphs":
            compile, cuda_graphs = True, True
        elif part == "compile-reduce-overhead":
            raise ValueError("compile-reduce-overhead: use the variant cuda-graphs, the training code path for CUDA graphs")
        elif part.startswith("compile-") and part[len("compile-"):] in compile_modes:
            compile, compile_mode = True, part[len("compile-"):]
        elif part in SDPA_BACKENDS:
            sdpa_backend = SDPA_BACKENDS[part]
        elif part in FLASH_PACKAGES:
            flash_package = FLASH_PACKAGES[part]
        else:
            raise ValueError(
                f"unknown variant part '{part}' in '{name}': use default, eager, compile, "
                f"{', '.join('compile-' + mode for mode in compile_modes)}, cuda-graphs, {', '.join(SDPA_BACKENDS)}, "
                f"{', '.join(FLASH_PACKAGES)}, {', '.join(FUSED_VARIANTS)}, joined by '+'"
            )
    if sdpa_backend is not None and flash_package is not None:
        raise ValueError(f"'{name}' names an SDPA kernel and a FlashAttention package: attention runs through one of them")
    return Variant(name, compile=compile, compile_mode=compile_mode, cuda_graphs=cuda_graphs, sdpa_backend=sdpa_backend,
                   flash_package=flash_package, fused_families=fused_families)


def build_state(base_config: PretrainConfig, variant: Variant, metadata: PuzzleDatasetMetadata, context: DistributedContext):
    # A compile mode is applied below to the uncompiled step; otherwise pretrain.py compiles or not.
    compile = False if variant.compile_mode is not None else variant.compile
    # Validated like a training config, so a variant that training would refuse is refused here too.
    raw = base_config.model_dump()
    raw["cuda_graphs"] = variant.cuda_graphs
    if compile is not None:
        raw["compile"] = compile
    if variant.fused_families is not None:
        raw["arch"]["fused_kernels"] = False  # the variant's families are applied below instead of all
    config = validate_config(raw)
    # stdout carries only the JSON lines; the optimiser builder reports its choice with print().
    with contextlib.redirect_stdout(sys.stderr):
        state = pretrain.build_train_state(config, metadata, context)
    # Before the first step, so the step compiles (lazily, at its first call) with the fused modules.
    if variant.fused_families:
        apply_fused_kernels(state.loss_head.model, context.device, variant.fused_families)
    if variant.compile_mode is not None:
        state.step_fn = torch.compile(state.loss_head, dynamic=False, mode=variant.compile_mode)
    return config, state


@contextlib.contextmanager
def attention_override(variant: Variant):
    """Route attention through the variant's SDPA kernel or FlashAttention package, if it names one."""
    if variant.sdpa_backend is None and variant.flash_package is None:
        yield
        return
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(attention.forced_backend(variant.flash_package or attention.SDPA))
        except ImportError:
            raise ConfigError(f"variant '{variant.name}': the {variant.flash_package} package does not import here; "
                              "install it, or leave that variant out of --compare") from None
        if variant.sdpa_backend is not None:
            stack.enter_context(sdpa_kernel(variant.sdpa_backend))
        yield


# Timing -----------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """Timestamps at step boundaries: CUDA events on the GPU (the host never waits inside the loop),
    perf_counter on the CPU. A step's time runs from its start to the next step's start, so time the
    GPU spends waiting for the host counts, as it does in training."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def step_ms(self) -> List[float]:
        pairs = zip(self.marks, self.marks[1:])
        if self.cuda:
            torch.cuda.synchronize()
            return [start.elapsed_time(end) for start, end in pairs]
        return [(end - start) * 1e3 for start, end in pairs]


def run_steps(config: PretrainConfig, state, batches, context: DistributedContext, count: int, clock: Optional[StepClock] = None) -> None:
    """`count` real training steps with the training loop's host syncs: a step's metrics are read
    (and checked for NaN) right after the next step has been launched."""
    pending = None
    for _ in range(count):
        if clock is not None:
            clock.mark()
        batch = batches[state.step % len(batches)]
        current = pretrain.train_batch(config, state, batch, config.global_batch_size, context)
        if pending is not None:
            pretrain.finish_train_metrics(pending, config.global_batch_size)
        pending = current
    if clock is not None:
        clock.mark()
    if pending is not None:
        pretrain.finish_train_metrics(pending, config.global_batch_size)


def weight_check_ms(state, device: torch.device, repeats: int = 20) -> float:
    """Median time of the check that every training step makes for non-finite weights and optimiser
    state (one fused pass, pretrain.train_batch), timed alone: its cost inside each timed step."""
    clock = StepClock(device)
    for _ in range(repeats):
        clock.mark()
        any_non_finite(pretrain.updated_tensors(state, device))
    clock.mark()
    return float(np.median(clock.step_ms()))


def memory_gib(device: torch.device) -> Optional[float]:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None


# Profile ----------------------------------------------------------------------------------------


def profile_steps(folder: str, config: PretrainConfig, state, batches, context: DistributedContext) -> None:
    """Profile a few steps: DIR/trace.json.gz (chrome://tracing, Perfetto) and DIR/top_kernels.txt."""
    cuda = context.device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as profiler:
        run_steps(config, state, batches, context, PROFILED_STEPS)
        synchronize(context.device)
    os.makedirs(folder, exist_ok=True)
    profiler.export_chrome_trace(os.path.join(folder, "trace.json.gz"))
    with open(os.path.join(folder, "top_kernels.txt"), "w") as file:
        file.write(kernel_table(profiler.key_averages(), cuda))


def kernel_table(averages, cuda: bool, rows: int = 25) -> str:
    """The GPU kernels that took the most time over the profiled steps (CPU ops on a CPU run)."""
    if not cuda:
        return f"Top {rows} CPU ops by self time over {PROFILED_STEPS} steps\n" + averages.table(sort_by="self_cpu_time_total", row_limit=rows)
    # Annotations such as "Optimizer.step#..." also carry device time: that of the kernels they span.
    kernels = [a for a in averages if a.device_type == torch.autograd.DeviceType.CUDA and not a.is_user_annotation]
    kernels.sort(key=lambda a: a.self_device_time_total, reverse=True)
    total_us = sum(a.self_device_time_total for a in kernels)
    lines = [f"Top {rows} CUDA kernels by time over {PROFILED_STEPS} steps ({total_us / 1e3:.1f} ms of kernel time in all)",
             f"{'ms':>9} {'share':>6} {'calls':>6} {'us/call':>9}  kernel"]
    for a in kernels[:rows]:
        lines.append(f"{a.self_device_time_total / 1e3:9.2f} {a.self_device_time_total / total_us:6.1%} {a.count:6d} "
                     f"{a.self_device_time_total / a.count:9.1f}  {a.key}")
    return "\n".join(lines) + "\n"


# One variant ------------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def benchmark_variant(variant: Variant, base_config: PretrainConfig, metadata: PuzzleDatasetMetadata, batches, context: DistributedContext,
                      args: argparse.Namespace, peak_tflops: Optional[float]) -> dict:
    device = context.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    config, state = build_state(base_config, variant, metadata, context)
    needed_steps = args.warmup + args.steps + (PROFILED_STEPS if args.profile else 0)
    if state.total_steps < needed_steps:
        raise ConfigError(f"the schedule has {state.total_steps} steps, fewer than the {needed_steps} to run: use a smaller --batch")

    model = state.loss_head.model
    dtype, head_dim = model.inner.forward_dtype, model.config.hidden_size // model.config.num_heads
    seq_len = metadata.seq_len + model.inner.puzzle_emb_len
    with attention_override(variant):
        # The first step compiles (when compiled); the further warm-up steps settle caches and autotuning.
        start = time.perf_counter()
        run_steps(config, state, batches, context, 1)
        synchronize(device)
        compile_seconds = time.perf_counter() - start
        run_steps(config, state, batches, context, args.warmup - 1)
        synchronize(device)

        clock = StepClock(device)
        run_steps(config, state, batches, context, args.steps, clock)
        step_ms = clock.step_ms()
        peak_memory = memory_gib(device)
        check_ms = weight_check_ms(state, device)

        if args.profile:
            folder = args.profile if len(args.variants) == 1 else os.path.join(args.profile, re.sub(r"[^\w.-]", "_", variant.name))
            profile_steps(folder, config, state, batches, context)

        if any(isinstance(module, Attention) for module in model.modules()):
            backend = attention.attention_backend(seq_len, device, dtype, head_dim)
        else:
            backend = "none"  # TRM with mlp_t
    if variant.sdpa_backend is not None and backend != "none":
        backend = f"{backend} ({variant.sdpa_backend.name})"

    median_ms, p90_ms = float(np.median(step_ms)), float(np.percentile(step_ms, 90))
    tokens = config.global_batch_size * (metadata.seq_len + model.inner.puzzle_emb_len)
    # The model is built for one micro-batch; a step runs gradient_accumulation_steps of them on each process.
    flops = train_step_flops(model.inner) * config.gradient_accumulation_steps * context.world_size
    achieved_tflops = flops / (median_ms * 1e-3) / 1e12
    total_peak_tflops = peak_tflops * context.world_size if peak_tflops else None
    return {
        "variant": variant.name,
        "shape": args.shape,
        "batch": config.global_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "processes": context.world_size,
        "seq_len": metadata.seq_len,
        "puzzle_positions": model.inner.puzzle_emb_len,
        "num_identifiers": metadata.num_puzzle_identifiers,
        "arch": args.arch,
        "overrides": args.override,
        "device": device_name(device),
        "torch": torch.__version__,
        "forward_dtype": model.config.forward_dtype,
        "compiled": state.step_fn is not state.loss_head,
        "compile_mode": variant.compile_mode,
        "cuda_graphs": isinstance(state.step_fn, pretrain.CudaGraphStep),
        "attention_backend": backend,
        # What models/fused swapped in, e.g. "quack block, quack MLP with gradient", or "off".
        "fused_kernel": fused_kernels_in_use(model),
        "optimizers": [f"{type(optimizer).__module__}.{type(optimizer).__qualname__}" for optimizer in state.optimizers],
        "parameters": sum(p.numel() for p in state.loss_head.parameters()),
        "compile_seconds": round(compile_seconds, 3),
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "step_ms_median": round(median_ms, 3),
        "step_ms_p90": round(p90_ms, 3),
        # The per-step check for non-finite weights, included in the step times above.
        "weight_check_ms": round(check_ms, 4),
        "weight_check_share": round(check_ms / median_ms, 5),
        "tokens_per_s": round(tokens / (median_ms * 1e-3), 1),
        "flops_per_step": flops,
        "achieved_tflops": round(achieved_tflops, 3),
        "peak_tflops": peak_tflops,
        "fraction_of_peak": round(achieved_tflops / total_peak_tflops, 4) if peak_tflops else None,
        "flop_floor_ms": round(flops / (total_peak_tflops * 1e12) * 1e3, 3) if peak_tflops else None,
        "peak_memory_gib": peak_memory,
    }


# Command line -----------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="sudoku", help="dataset shape (default sudoku)")
    parser.add_argument("--batch", type=int, help="global batch size (default: the shape's; sudoku 768, maze 96, arc 96, tiny 8)")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1, metavar="K",
                        help="run each batch as K micro-batches, as pretrain.py's gradient_accumulation_steps (default 1)")
    parser.add_argument("--num-identifiers", type=int, help="puzzle identifiers, i.e. rows of the puzzle embedding table "
                        "(default: the shape's; arc 1000; the real ARC-1 build has 876407)")
    parser.add_argument("--arch", default="hrm", help=f"the model and its recipe's arch keys: {', '.join(ARCHS)} (default hrm); "
                        "trm is TRM's Sudoku recipe (mlp_t, no positions, 2 layers, H/L cycles 3/6)")
    parser.add_argument("--override", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides as on pretrain.py's command line, applied last, e.g. --override arch.no_ACT_continue=true "
                        "arch.hidden_size=256 (repeatable)")
    parser.add_argument("--compare", default="default", help="comma-separated variants to run in turn (default: default)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps, the first of which compiles (default 10)")
    parser.add_argument("--steps", type=int, default=50, help="timed steps (default 50)")
    parser.add_argument("--peak-tflops", type=float, help=f"peak TFLOP/s for the fraction of peak (default {HOPPER_PEAK_TFLOPS:g} on H100/H200, else none)")
    parser.add_argument("--profile", metavar="DIR", help=f"profile {PROFILED_STEPS} steps after timing: DIR/trace.json.gz and DIR/top_kernels.txt "
                        "(DIR/<variant>/ when comparing)")
    parser.add_argument("--output", metavar="FILE", help="also append the JSON lines to FILE")
    args = parser.parse_args(argv)

    for name, value, minimum in (("--warmup", args.warmup, 1), ("--steps", args.steps, 1), ("--batch", args.batch, 1),
                                   ("--gradient-accumulation-steps", args.gradient_accumulation_steps, 1), ("--num-identifiers", args.num_identifiers, 1)):
        if value is not None and value < minimum:
            parser.error(f"{name} must be at least {minimum}, got {value}")
    if args.arch not in ARCHS:
        hint = f"; config keys go to --override, e.g. --override arch.{args.arch}" if "=" in args.arch else ""
        parser.error(f"--arch names the model, one of {', '.join(ARCHS)}, got '{args.arch}'{hint}")
    for item in args.override:
        if "=" not in item:
            parser.error(f"--override takes KEY=VALUE items (e.g. arch.hidden_size=256), got '{item}'")
    try:
        args.variants = [parse_variant(name.strip()) for name in args.compare.split(",")]
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    args = parse_args(argv)
    with distributed_session() as context:
        return run_benchmark(args, context)


def run_benchmark(args: argparse.Namespace, context: DistributedContext) -> List[dict]:
    shape = SHAPES[args.shape]
    batch = args.batch or shape.batch
    num_identifiers = args.num_identifiers or shape.num_identifiers
    if context.is_distributed and args.profile:
        raise ConfigError("--profile runs in one process: start the benchmark with python, not torchrun")
    # The shape's arch keys with '++': set whether or not the arch yaml has them.
    base_config = load_config(["data_path=synthetic", f"global_batch_size={batch}", f"gradient_accumulation_steps={args.gradient_accumulation_steps}",
                               "wandb.mode=disabled", *ARCHS[args.arch], *(f"++arch.{item}" for item in shape.arch), *args.override]
                              + environment_overrides(os.environ))
    check_world_size(base_config, context.world_size)
    metadata = shape_metadata(shape, num_identifiers)
    local = batch // context.world_size
    batches = [{key: value[context.rank * local:(context.rank + 1) * local] for key, value in global_batch.items()}
               for global_batch in synthetic_batches(shape, batch, num_identifiers)]
    peak_tflops = args.peak_tflops
    if peak_tflops is None and context.device.type == "cuda" and re.search(r"H100|H200", torch.cuda.get_device_name(context.device)):
        peak_tflops = HOPPER_PEAK_TFLOPS

    records = []
    for variant in args.variants:
        try:
            record = benchmark_variant(variant, base_config, metadata, batches, context, args, peak_tflops)
        except ConfigError:
            raise
        except Exception as error:  # e.g. an SDPA kernel this GPU or dtype lacks, out of memory: report it and go on
            if context.is_distributed:
                raise  # the other processes may be inside a collective: the run cannot go on
            traceback.print_exc(file=sys.stderr)
            record = {"variant": variant.name, "shape": args.shape, "batch": batch, "device": device_name(context.device),
                      "torch": torch.__version__, "error": f"{type(error).__name__}: {error}".splitlines()[0]}
        if context.is_main:
            line = json.dumps(record)
            print(line, flush=True)
            if args.output:
                with open(args.output, "a") as file:
                    file.write(line + "\n")
        records.append(record)
        # Release this variant's model, optimiser state and compiled graphs before the next is built. The
        # empty Dynamo cache also makes the next variant compile on its own (its compile time is its
        # own) and keeps rebuilt models from adding up recompilations towards Dynamo's limit.
        torch._dynamo.reset()
        gc.collect()
        if context.device.type == "cuda":
            torch.cuda.empty_cache()
    return records


if __name__ == "__main__":
    try:
        main()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        end_process(1)
    end_process(0)
