"""Fused SwiGLU gate/up projection and activation for no-gradient forward passes (Triton).

`models.layers.SwiGLU` computes `gate, up = (x @ W^T).chunk(2, -1)` and then `silu(gate) * up`: the
matmul writes an [M, 2I] tensor and a second kernel reads it back. Here one kernel keeps both
products in registers and writes only the [M, I] activation, which removes that round trip.

Rounding: gate and up are accumulated in float32 and rounded to the input dtype, exactly as the
unfused matmul stores them; silu(gate) * up is then computed in float32 and rounded once. (The
unfused half-precision path also rounds silu(gate) before the product, so results can differ from
it by an ulp; `models.kernels.swiglu_reference` follows this kernel's steps.)

Importing this module raises ImportError where Triton is not installed.
"""

import os

import torch
import triton
import triton.language as tl

# Triton's CPU interpreter runs every program in Python, so there it gets one small config: tests
# stay fast, and small blocks exercise the partial-block masks and the partial last program group.
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

if _INTERPRET:
    _CONFIGS = [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 2}, num_warps=4, num_stages=1)]
else:
    # Hopper, bf16. A program holds two [BLOCK_M, BLOCK_N] float32 accumulators, so 128 x 128 is as
    # much register state as a 128 x 256 GEMM tile: 128 registers per thread over 8 warps (over 4 it
    # would spill). Shared memory per pipeline stage is (BLOCK_M + 2 * BLOCK_N) * BLOCK_K * 2 bytes;
    # the totals below stay under Hopper's 227 KB. float32 doubles them, and the autotuner skips the
    # configs that then no longer fit (128 x 64 over 3 stages does).
    _CONFIGS = [
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),  # 144 KB
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),  # 192 KB
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),  # 128 KB
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),  # 96 KB
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),  # 160 KB
    ]


# The autotuner adds the tensors' dtypes to the key itself; M is left out so that batches of other
# sizes reuse the tuned config instead of re-tuning.
@triton.autotune(configs=_CONFIGS, key=["H", "I"])
@triton.heuristics({"EVEN_K": lambda args: args["H"] % args["BLOCK_K"] == 0})
@triton.jit
def _swiglu_kernel(
    x_ptr,
    weight_ptr,
    out_ptr,
    M,
    # H and I are fixed by the model, so compiling per value costs nothing; it gives a static K loop
    # (the interpreter also needs H as a Python int for range() under NumPy >= 2.4).
    H: tl.constexpr,
    I: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    # Grouped ordering: consecutive programs sweep all column blocks of GROUP_M row blocks, so those
    # rows of x stay in L2 while every column block reads them.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(I, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (pid // num_pid_in_group) * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % num_pid_in_group) % group_size_m
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Rows past the end wrap around to valid rows, so the loads need no M or N mask; the store below
    # drops those rows and columns. int64 because M * H and M * I outgrow int32 for large batches.
    rows_x = (offs_m % M).to(tl.int64)
    rows_gate = offs_n % I
    x_ptrs = x_ptr + rows_x[:, None] * H + offs_k[None, :]
    gate_ptrs = weight_ptr + rows_gate[:, None] * H + offs_k[None, :]
    up_ptrs = gate_ptrs + I * H

    acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(H, BLOCK_K)):
        if EVEN_K:
            x_tile = tl.load(x_ptrs)
            gate_tile = tl.load(gate_ptrs)
            up_tile = tl.load(up_ptrs)
        else:
            k_mask = offs_k[None, :] < H - k * BLOCK_K
            x_tile = tl.load(x_ptrs, mask=k_mask, other=0.0)
            gate_tile = tl.load(gate_ptrs, mask=k_mask, other=0.0)
            up_tile = tl.load(up_ptrs, mask=k_mask, other=0.0)
        acc_gate = tl.dot(x_tile, tl.trans(gate_tile), acc_gate, input_precision=DOT_PRECISION)
        acc_up = tl.dot(x_tile, tl.trans(up_tile), acc_up, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K
        gate_ptrs += BLOCK_K
        up_ptrs += BLOCK_K

    out_dtype = out_ptr.dtype.element_ty
    gate = acc_gate.to(out_dtype).to(tl.float32)
    up = acc_up.to(out_dtype).to(tl.float32)
    # Written as PyTorch's silu kernel computes it, x / (1 + exp(-x)).
    activation = gate / (1.0 + tl.exp(-gate)) * up

    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * I + offs_n[None, :]
    out_mask = (offs_m[:, None] < M) & (offs_n[None, :] < I)
    tl.store(out_ptrs, activation.to(out_dtype), mask=out_mask)


def _check_inputs(x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"swiglu: x and weight must be 2-D, got x {tuple(x.shape)} and weight {tuple(weight.shape)}")
    if x.dtype != weight.dtype:
        raise ValueError(f"swiglu: x and weight must have the same dtype, got x {x.dtype} and weight {weight.dtype}")
    if x.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"swiglu: dtype must be one of {_SUPPORTED_DTYPES}, got {x.dtype}")
    if x.device != weight.device:
        raise ValueError(f"swiglu: x and weight must be on the same device, got x {x.device} and weight {weight.device}")
    if x.device.type != "cuda" and not _INTERPRET:
        raise ValueError(f"swiglu: tensors must be on a CUDA device (or TRITON_INTERPRET=1 set), got {x.device}")
    hidden = x.shape[1]
    if weight.shape[1] != hidden or weight.shape[0] % 2 != 0:
        raise ValueError(
            f"swiglu: weight must be [2*I, H] with H = x.shape[1] = {hidden}, got weight {tuple(weight.shape)}"
        )
    inner = weight.shape[0] // 2
    if hidden % 16 != 0 or inner % 16 != 0:
        raise ValueError(f"swiglu: H and I must be multiples of 16, got H={hidden}, I={inner}")
    if not x.is_contiguous() or not weight.is_contiguous():
        raise ValueError(
            f"swiglu: x and weight must be contiguous, got x contiguous={x.is_contiguous()}, "
            f"weight contiguous={weight.is_contiguous()}"
        )
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        raise ValueError("swiglu has no backward: call it under torch.no_grad() or torch.inference_mode()")


def swiglu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """silu(x @ Wg^T) * (x @ Wu^T), [M, I] in x's dtype, without the [M, 2I] intermediate.

    x is [M, H]; weight is [2*I, H] with the gate rows first and the up rows second, the layout of
    `SwiGLU.gate_up_proj.weight` (cast to x's dtype). Both contiguous, same dtype, H and I multiples
    of 16. Forward only: raises ValueError for inputs that need a gradient or that it does not support.
    """
    _check_inputs(x, weight)
    rows, hidden = x.shape
    inner = weight.shape[0] // 2
    out = torch.empty((rows, inner), dtype=x.dtype, device=x.device)
    # An empty batch would otherwise be what the autotuner tunes (H, I) on.
    if rows == 0:
        return out

    def grid(meta):
        return (triton.cdiv(rows, meta["BLOCK_M"]) * triton.cdiv(inner, meta["BLOCK_N"]),)

    # Triton's default for float32 dots is TF32; the unfused float32 path is full precision.
    dot_precision = "ieee" if x.dtype == torch.float32 else "tf32"
    _swiglu_kernel[grid](x, weight, out, rows, hidden, inner, DOT_PRECISION=dot_precision)
    return out
