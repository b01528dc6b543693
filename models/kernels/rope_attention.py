"""Attention with RoPE fused in, read straight from the fused qkv projection (Triton, forward only).

`models.layers.Attention` computes, between `qkv_proj` and `o_proj`: split qkv into heads, rotate
q and k (RoPE, in float32, rounded back to the input dtype), non-causal softmax attention. On a GPU
that is a RoPE element-wise kernel that reads and writes q and k, then attention that reads them
again. `rope_attention` does it in one kernel: each program rotates its query block once and each
key block as it is loaded, and writes the output in the [batch, seq, heads * head_dim] layout
`o_proj` takes. It has no backward, so it is meant for the forward passes that run without
gradients.

The numerics follow the PyTorch path: RoPE in float32 rounded to the input dtype before the
products, float32 scores and online softmax, probabilities rounded to the input dtype before the
P @ V product (as FlashAttention does), output rounded to the input dtype.

Importing this module raises ImportError where Triton is not installed.
"""

import os
from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from models.layers import apply_rotary_pos_emb

SUPPORTED_HEAD_DIMS = (32, 64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOG2_E = 1.4426950408889634
# CUDA's limit on the second grid dimension, which runs over batch * heads.
MAX_BATCH_HEADS = 65535

# Triton's CPU interpreter (TRITON_INTERPRET=1, used by the tests without a GPU) takes the setting
# when kernels are defined, so it is read once here, with them.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

if _INTERPRETED:
    # One config, so no benchmarking; blocks small enough that short test sequences already span
    # several key blocks and end in partial ones, and BLOCK_M != BLOCK_N so a mixed-up axis shows.
    _CONFIGS = [triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
else:
    # Hopper: wgmma wants 64-row multiples per warp group; the stages pipeline the K/V loads.
    # Few configs: autotuning compiles each one at a model's first call.
    _CONFIGS = [
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 128}, num_warps=4, num_stages=2),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=2),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=2),
    ]


@triton.jit
def _load_rotated_halves(
    head_ptr,
    cos_ptr,
    sin_ptr,
    positions,
    valid,
    ROW_STRIDE: tl.constexpr,
    HALF: tl.constexpr,
    HAS_ROPE: tl.constexpr,
):
    """Rows `positions` of one q or k head as its two column halves, RoPE applied.

    With the halves apart, rotate_half(x) = cat(-x2, x1) needs no permutation. Rows not `valid`
    load as zeros.
    """
    half_cols = tl.arange(0, HALF)[None, :]
    mask = valid[:, None]
    first_ptrs = head_ptr + positions[:, None] * ROW_STRIDE + half_cols
    first = tl.load(first_ptrs, mask=mask, other=0.0)
    second = tl.load(first_ptrs + HALF, mask=mask, other=0.0)
    if HAS_ROPE:
        table_offsets = positions[:, None] * (2 * HALF) + half_cols
        cos_first = tl.load(cos_ptr + table_offsets, mask=mask, other=0.0)
        cos_second = tl.load(cos_ptr + table_offsets + HALF, mask=mask, other=0.0)
        sin_first = tl.load(sin_ptr + table_offsets, mask=mask, other=0.0)
        sin_second = tl.load(sin_ptr + table_offsets + HALF, mask=mask, other=0.0)
        first_fp32 = first.to(tl.float32)
        second_fp32 = second.to(tl.float32)
        first = (first_fp32 * cos_first - second_fp32 * sin_first).to(head_ptr.dtype.element_ty)
        second = (second_fp32 * cos_second + first_fp32 * sin_second).to(head_ptr.dtype.element_ty)
    return first, second


@triton.autotune(configs=_CONFIGS, key=["SEQ_LEN", "HEAD_DIM"])
@triton.jit
def _rope_attention_kernel(
    qkv_ptr,
    cos_ptr,
    sin_ptr,
    out_ptr,
    scale_log2e,
    SEQ_LEN: tl.constexpr,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HAS_ROPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One program: BLOCK_M query rows of one (batch, head) against all keys of that head.

    SEQ_LEN is a compile-time constant: a model has one sequence length, so this compiles once per
    model and the key loop's trip count is known. (Triton 3.6's interpreter also cannot loop up to
    a runtime integer with NumPy >= 2.4.)
    """
    HALF: tl.constexpr = HEAD_DIM // 2
    QKV_ROW: tl.constexpr = 3 * NUM_HEADS * HEAD_DIM
    OUT_ROW: tl.constexpr = NUM_HEADS * HEAD_DIM
    dtype = qkv_ptr.dtype.element_ty

    batch_head = tl.program_id(1)
    batch = batch_head // NUM_HEADS
    head = batch_head % NUM_HEADS
    # int64: batch * SEQ_LEN * QKV_ROW passes 2**31 elements at large batch * sequence sizes.
    qkv_batch_ptr = qkv_ptr + batch.to(tl.int64) * SEQ_LEN * QKV_ROW
    query_ptr = qkv_batch_ptr + head * HEAD_DIM
    key_ptr = qkv_batch_ptr + (NUM_HEADS + head) * HEAD_DIM
    value_ptr = qkv_batch_ptr + (2 * NUM_HEADS + head) * HEAD_DIM

    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_valid = rows < SEQ_LEN
    cols = tl.arange(0, HEAD_DIM)
    query_first, query_second = _load_rotated_halves(
        query_ptr, cos_ptr, sin_ptr, rows, row_valid, QKV_ROW, HALF, HAS_ROPE
    )

    # Online softmax in base 2: scores carry log2(e) / sqrt(HEAD_DIM), so exp2 gives the softmax.
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for block_start in range(0, SEQ_LEN, BLOCK_N):
        keys = block_start + tl.arange(0, BLOCK_N)
        key_valid = keys < SEQ_LEN
        key_first, key_second = _load_rotated_halves(
            key_ptr, cos_ptr, sin_ptr, keys, key_valid, QKV_ROW, HALF, HAS_ROPE
        )
        scores = tl.dot(query_first, tl.trans(key_first), input_precision=DOT_PRECISION)
        scores = tl.dot(query_second, tl.trans(key_second), scores, input_precision=DOT_PRECISION)
        scores = tl.where(key_valid[None, :], scores * scale_log2e, float("-inf"))
        # Every block holds at least one valid key, so the new maximum is finite.
        new_max = tl.maximum(row_max, tl.max(scores, 1))
        probs = tl.exp2(scores - new_max[:, None])
        rescale = tl.exp2(row_max - new_max)
        row_sum = row_sum * rescale + tl.sum(probs, 1)
        value = tl.load(value_ptr + keys[:, None] * QKV_ROW + cols[None, :], mask=key_valid[:, None], other=0.0)
        acc = tl.dot(probs.to(dtype), value, acc * rescale[:, None], input_precision=DOT_PRECISION)
        row_max = new_max

    out = (acc / row_sum[:, None]).to(dtype)
    out_ptrs = out_ptr + batch.to(tl.int64) * SEQ_LEN * OUT_ROW + head * HEAD_DIM + rows[:, None] * OUT_ROW + cols[None, :]
    tl.store(out_ptrs, out, mask=row_valid[:, None])


def _check_inputs(qkv: torch.Tensor, num_heads: int, cos: Optional[torch.Tensor], sin: Optional[torch.Tensor]) -> int:
    """Raise ValueError naming what is unsupported; return the head dim."""
    if qkv.dim() != 3:
        raise ValueError(f"qkv must be [batch, seq, 3 * num_heads * head_dim], got shape {tuple(qkv.shape)}")
    if num_heads < 1:
        raise ValueError(f"num_heads must be positive, got {num_heads}")
    if qkv.shape[-1] % (3 * num_heads) != 0:
        raise ValueError(f"qkv's last dim {qkv.shape[-1]} is not divisible by 3 * num_heads = {3 * num_heads}")
    head_dim = qkv.shape[-1] // (3 * num_heads)
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim {head_dim} is not supported, only {SUPPORTED_HEAD_DIMS}")
    if qkv.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"qkv dtype {qkv.dtype} is not supported, only {SUPPORTED_DTYPES}")
    if not qkv.is_contiguous():
        raise ValueError("qkv must be contiguous")
    if (cos is None) != (sin is None):
        raise ValueError("cos and sin must be given together (RoPE) or both be None (no RoPE)")
    if cos is not None:
        expected_shape = (qkv.shape[1], head_dim)
        for name, table in (("cos", cos), ("sin", sin)):
            if tuple(table.shape) != expected_shape:
                raise ValueError(f"{name} must be [seq, head_dim] = {list(expected_shape)}, got {list(table.shape)}")
            if table.dtype != torch.float32:
                raise ValueError(f"{name} must be float32, got {table.dtype}")
            if not table.is_contiguous():
                raise ValueError(f"{name} must be contiguous")
            if table.device != qkv.device:
                raise ValueError(f"{name} is on {table.device}, qkv on {qkv.device}")
    return head_dim


def rope_attention(qkv: torch.Tensor, num_heads: int, cos: Optional[torch.Tensor], sin: Optional[torch.Tensor]) -> torch.Tensor:
    """Non-causal multi-head attention with RoPE from a fused qkv projection output.

    qkv: [batch, seq, 3 * num_heads * head_dim], contiguous, float16/bfloat16/float32, laid out as
    [all query heads | all key heads | all value heads]; head_dim 32, 64 or 128.
    cos, sin: [seq, head_dim] float32 RoPE tables (`RotaryEmbedding`'s, sliced to seq), or both None.
    Returns [batch, seq, num_heads * head_dim] in qkv's dtype, the input of `Attention.o_proj`.
    """
    head_dim = _check_inputs(qkv, num_heads, cos, sin)
    if not (qkv.is_cuda or _INTERPRETED):
        raise ValueError(f"qkv is on {qkv.device}: the kernel runs on CUDA tensors (or on any under TRITON_INTERPRET=1)")
    if qkv.requires_grad and torch.is_grad_enabled():
        raise ValueError("rope_attention has no backward: call it under torch.no_grad() or torch.inference_mode()")
    batch_size, seq_len, _ = qkv.shape
    if batch_size * num_heads > MAX_BATCH_HEADS:
        raise ValueError(f"batch * num_heads = {batch_size * num_heads} exceeds the grid limit {MAX_BATCH_HEADS}")
    out = torch.empty(batch_size, seq_len, num_heads * head_dim, dtype=qkv.dtype, device=qkv.device)
    if out.numel() == 0:
        return out

    def grid(meta):
        return (triton.cdiv(seq_len, meta["BLOCK_M"]), batch_size * num_heads)

    _rope_attention_kernel[grid](
        qkv,
        cos,
        sin,
        out,
        head_dim**-0.5 * LOG2_E,
        SEQ_LEN=seq_len,
        NUM_HEADS=num_heads,
        HEAD_DIM=head_dim,
        HAS_ROPE=cos is not None,
        # Triton's default for float32 dots is TF32; PyTorch's float32 attention is full precision.
        DOT_PRECISION="ieee" if qkv.dtype == torch.float32 else "tf32",
    )
    return out


def rope_attention_reference(qkv: torch.Tensor, num_heads: int, cos: Optional[torch.Tensor], sin: Optional[torch.Tensor]) -> torch.Tensor:
    """`rope_attention` in plain PyTorch, computed as `models.layers.Attention` does (SDPA backend)."""
    head_dim = _check_inputs(qkv, num_heads, cos, sin)
    batch_size, seq_len, _ = qkv.shape
    query, key, value = qkv.view(batch_size, seq_len, 3 * num_heads, head_dim).split(num_heads, dim=2)
    if cos is not None:
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
    # SDPA wants [batch, heads, seq, head_dim].
    out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
    return out.transpose(1, 2).reshape(batch_size, seq_len, num_heads * head_dim)
