"""Output projection, residual add and RMSNorm in one kernel, for no-gradient forward passes (Triton).

HRM's post-norm block ends both halves the same way: `hidden = rms_norm(hidden + proj(inner))`, with
`proj` the attention's o_proj or the MLP's down_proj. Unfused, the matmul writes its [M, N] output
and a second kernel reads it back with the residual to write the normalised sum. Here each program
computes BLOCK_M complete output rows (the whole hidden size N in one tile), so the RMS over a row is
a register reduction in the matmul's epilogue and the projection never goes to memory.

Rounding matches the unfused path: the product is accumulated in float32 and rounded to the input
dtype (as the matmul stores it), the residual add is computed in float32 and rounded (as PyTorch's
add of two half-precision tensors is), and `models.layers.rms_norm` runs in float32 on that sum and
rounds once at the end.

Importing this module raises ImportError where Triton is not installed.
"""

import os

import torch
import triton
import triton.language as tl

from models.layers import rms_norm

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# A program's float32 accumulator holds BLOCK_M full rows; past 1024 columns even 32 rows no longer
# fit in registers. tl.dot needs every tile dimension to be at least 16.
MIN_N, MAX_N = 16, 1024

# Triton's CPU interpreter runs every program in Python, so there it gets one small config: tests
# stay fast, and 32-row / 32-wide K blocks leave partial last row and K blocks on the test shapes.
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

if _INTERPRET:
    _CONFIGS = [triton.Config({"BLOCK_M": 32, "BLOCK_K": 32}, num_warps=4, num_stages=1)]
else:
    # Hopper, N = 512, bf16. The [BLOCK_M, 512] float32 accumulator is 128 registers per thread for
    # 64 rows over 8 warps (each of the two warp groups owns a 64 x 256 wgmma tile) or 32 rows over 4
    # warps. Shared memory per pipeline stage is (BLOCK_M + N) * BLOCK_K * 2 bytes, the weight tile
    # dominating: 72 KB at BLOCK_K 64, 36 KB at BLOCK_K 32 (34 KB with 32 rows), under ~200 KB in all.
    _CONFIGS = [
        triton.Config({"BLOCK_M": 64, "BLOCK_K": 64}, num_warps=8, num_stages=2),  # 144 KB
        triton.Config({"BLOCK_M": 64, "BLOCK_K": 32}, num_warps=8, num_stages=3),  # 108 KB
        triton.Config({"BLOCK_M": 64, "BLOCK_K": 32}, num_warps=8, num_stages=4),  # 144 KB
        triton.Config({"BLOCK_M": 32, "BLOCK_K": 64}, num_warps=4, num_stages=2),  # 136 KB
        triton.Config({"BLOCK_M": 32, "BLOCK_K": 32}, num_warps=4, num_stages=3),  # 102 KB
    ]


# The autotuner adds the tensors' dtypes to the key itself; M is left out so that batches of other
# sizes reuse the tuned config instead of re-tuning.
@triton.autotune(configs=_CONFIGS, key=["N", "K"])
@triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
@triton.jit
def _linear_add_rms_norm_kernel(
    x_ptr,
    weight_ptr,
    residual_ptr,
    out_ptr,
    M,
    eps,
    # N and K are fixed by the model, so compiling per value costs nothing; N must be a constexpr to
    # be the tile width, and a constexpr K gives a static loop (the interpreter also needs K as a
    # Python int for range() under NumPy >= 2.4).
    N: tl.constexpr,
    K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, N)
    offs_k = tl.arange(0, BLOCK_K)
    # Rows past the end wrap around to valid rows, so the loads need no row mask and those rows get
    # a finite norm; the store drops them. int64 because M * K outgrows int32 for large batches.
    rows = (offs_m % M).to(tl.int64)
    x_ptrs = x_ptr + rows[:, None] * K + offs_k[None, :]
    weight_ptrs = weight_ptr + offs_n[:, None] * K + offs_k[None, :]

    acc = tl.zeros((BLOCK_M, N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            x_tile = tl.load(x_ptrs)
            weight_tile = tl.load(weight_ptrs)
        else:
            k_mask = offs_k[None, :] < K - k * BLOCK_K
            x_tile = tl.load(x_ptrs, mask=k_mask, other=0.0)
            weight_tile = tl.load(weight_ptrs, mask=k_mask, other=0.0)
        acc = tl.dot(x_tile, tl.trans(weight_tile), acc, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K
        weight_ptrs += BLOCK_K

    out_dtype = out_ptr.dtype.element_ty
    row_offsets = rows[:, None] * N + offs_n[None, :]
    projection = acc.to(out_dtype).to(tl.float32)
    residual = tl.load(residual_ptr + row_offsets).to(tl.float32)
    hidden = (residual + projection).to(out_dtype).to(tl.float32)
    # N is a power of two, so dividing by it is exact, like PyTorch's mean (a sum times 1/N).
    variance = tl.sum(hidden * hidden, axis=1) / N
    normalised = hidden * tl.rsqrt(variance + eps)[:, None]

    out_offsets = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    tl.store(out_ptr + out_offsets, normalised.to(out_dtype), mask=offs_m[:, None] < M)


def _check_inputs(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor) -> None:
    tensors = {"x": x, "weight": weight, "residual": residual}
    if any(tensor.dim() != 2 for tensor in tensors.values()):
        shapes = ", ".join(f"{name} {tuple(tensor.shape)}" for name, tensor in tensors.items())
        raise ValueError(f"linear_add_rms_norm: x, weight and residual must be 2-D, got {shapes}")
    if len({tensor.dtype for tensor in tensors.values()}) != 1:
        dtypes = ", ".join(f"{name} {tensor.dtype}" for name, tensor in tensors.items())
        raise ValueError(f"linear_add_rms_norm: x, weight and residual must have the same dtype, got {dtypes}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"linear_add_rms_norm: dtype must be one of {SUPPORTED_DTYPES}, got {x.dtype}")
    if len({tensor.device for tensor in tensors.values()}) != 1:
        devices = ", ".join(f"{name} {tensor.device}" for name, tensor in tensors.items())
        raise ValueError(f"linear_add_rms_norm: x, weight and residual must be on the same device, got {devices}")
    if x.device.type != "cuda" and not _INTERPRET:
        raise ValueError(f"linear_add_rms_norm: tensors must be on a CUDA device (or TRITON_INTERPRET=1 set), got {x.device}")
    rows, k = x.shape
    n = weight.shape[0]
    if weight.shape[1] != k:
        raise ValueError(
            f"linear_add_rms_norm: weight must be [N, K] with K = x.shape[1] = {k}, got weight {tuple(weight.shape)}"
        )
    if residual.shape != (rows, n):
        raise ValueError(
            f"linear_add_rms_norm: residual must be [M, N] = [{rows}, {n}] (x rows, weight rows), got {tuple(residual.shape)}"
        )
    if not (MIN_N <= n <= MAX_N and n & (n - 1) == 0):
        raise ValueError(f"linear_add_rms_norm: N must be a power of two from {MIN_N} to {MAX_N}, got N={n}")
    if k == 0 or k % 16 != 0:
        raise ValueError(f"linear_add_rms_norm: K must be a positive multiple of 16, got K={k}")
    if not all(tensor.is_contiguous() for tensor in tensors.values()):
        flags = ", ".join(f"{name} {tensor.is_contiguous()}" for name, tensor in tensors.items())
        raise ValueError(f"linear_add_rms_norm: x, weight and residual must be contiguous, got contiguous: {flags}")
    if torch.is_grad_enabled() and any(tensor.requires_grad for tensor in tensors.values()):
        raise ValueError("linear_add_rms_norm has no backward: call it under torch.no_grad() or torch.inference_mode()")


def linear_add_rms_norm(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor, eps: float) -> torch.Tensor:
    """rms_norm(residual + x @ weight^T, eps), [M, N] in x's dtype, without the [M, N] projection.

    x is [M, K]; weight is [N, K], the nn.Linear layout (e.g. `o_proj.weight` cast to x's dtype);
    residual is [M, N]. All contiguous and of one dtype; N a power of two from 16 to 1024, K a
    multiple of 16. Forward only: raises ValueError for inputs that need a gradient or that it does
    not support.
    """
    _check_inputs(x, weight, residual)
    rows, k = x.shape
    n = weight.shape[0]
    out = torch.empty((rows, n), dtype=x.dtype, device=x.device)
    # An empty batch would otherwise be what the autotuner tunes (N, K) on.
    if rows == 0:
        return out

    def grid(meta):
        return (triton.cdiv(rows, meta["BLOCK_M"]),)

    # Triton's default for float32 dots is TF32; the unfused float32 path is full precision.
    dot_precision = "ieee" if x.dtype == torch.float32 else "tf32"
    _linear_add_rms_norm_kernel[grid](x, weight, residual, out, rows, float(eps), n, k, DOT_PRECISION=dot_precision)
    return out


def linear_add_rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor, eps: float) -> torch.Tensor:
    """What `linear_add_rms_norm` computes, in plain PyTorch with the same rounding steps."""
    projection = (x.float() @ weight.float().t()).to(x.dtype)
    return rms_norm(residual + projection, eps)
