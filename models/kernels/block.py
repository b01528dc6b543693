"""A whole post-norm block in fused matrix-product epilogues, for the gradient-free forward passes.

HRM's block is x <- rms(x + attn(x)); x <- rms(x + mlp(x)). On the PyTorch path each step between
the matrix products (RoPE, the two residual adds with their RMSNorms, silu(gate) * up) is a pass
over memory of its own. Here every one rides in a product's epilogue, and the RMSNorms are
deferred: the product that ends a residual sum writes the sum y unnormalised together with
sum(y^2) per row, and the products that read y scale their accumulators by rstd = 1 / rms(y) (a
row scale commutes with the product). One block, x arriving with its pending scale rstd_x:

    qkv   = rope((x @ Wqkv^T) * rstd_x)
    o     = attention(q, k, v)
    y     = o @ Wo^T + x * rstd_x,         rstd_y = 1 / rms(y)
    inner = silu(g) * u,  (g, u) = (y @ Wgu^T) * rstd_y
    z     = inner @ Wd^T + y * rstd_y,     rstd_z = 1 / rms(z)

and the block hands (z, rstd_z) to the next; the reasoning module multiplies the scale out after
its last block. The passes with gradient use the first product alone, with its backward
(`RopeQKVWithGradient`), and keep the PyTorch path for the rest of the block. Of the ~28 reads and writes of a [tokens, hidden]-sized tensor per block on the
PyTorch path this leaves ~20.

Pairs: the epilogues work on adjacent columns (2j, 2j + 1). HRM's RoPE rotates dims (j, j + d/2)
("rotate half"), so the query and key rows of the qkv weight are interleaved to
(0, d/2, 1, d/2 + 1, ...); that permutes the head dims of q and k alike and leaves q . k, and so
the attention, unchanged. The gate/up weight is interleaved to (gate_0, up_0, gate_1, ...) for the
same reason.

The kernels are quack's CuTe-DSL matrix products (`models/kernels/quack_block.py`, the optional
`quack-kernels` package, Hopper and newer). They compute in float32 and round once where the
PyTorch path rounds after each step, so results differ from it by bf16 rounding. The `*_reference`
functions below compute what the kernels compute, in PyTorch; a kernel set is used on a device only
after it matched them there.
"""

import functools
import math
from typing import Callable, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

from models.kernels import FUSED_DTYPES, check_against_references, first_passing


class RopeTables(NamedTuple):
    """What the qkv epilogue needs to rotate: every row's position and every column's frequency."""

    positions: torch.Tensor  # [tokens] float32, the row's position in its sequence
    # [3 * heads * head_dim] float32: per rotation pair (hi, lo), the float-float split of
    # inv_freq / (2 pi) (the epilogue's angles are in turns); zero over the value columns, and over
    # all columns without RoPE: a zero angle is an exact identity.
    frequencies: torch.Tensor


def rope_tables(
    inv_freq: Optional[torch.Tensor], batch_size: int, seq_len: int, num_heads: int, head_dim: int, device: torch.device
) -> RopeTables:
    """The tables for `batch_size` sequences of `seq_len`; `inv_freq` [head_dim / 2] (None: no RoPE)."""
    positions = torch.arange(seq_len, dtype=torch.float32, device=device).repeat(batch_size)
    frequencies = torch.zeros(3 * num_heads * head_dim, dtype=torch.float32, device=device)
    if inv_freq is not None:
        turns = inv_freq.double() / (2 * math.pi)
        high = turns.float()
        low = (turns - high.double()).float()
        per_head = torch.stack((high, low), dim=-1).reshape(head_dim)
        frequencies[: 2 * num_heads * head_dim] = per_head.repeat(2 * num_heads)
    return RopeTables(positions, frequencies)


def block_supported(hidden_size: int, head_dim: int) -> bool:
    """Shapes the kernels take: 16-element-aligned rows, whole rotation pairs; other models keep PyTorch."""
    return hidden_size % 16 == 0 and head_dim % 16 == 0


def interleave_qkv_weight(weight: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """qkv_proj's weight with each query and key head's rows ordered (0, d/2, 1, d/2 + 1, ...)."""
    query_key, value = weight.split((2 * num_heads * head_dim, num_heads * head_dim))
    query_key = query_key.view(2 * num_heads, 2, head_dim // 2, -1).transpose(1, 2).reshape(2 * num_heads * head_dim, -1)
    return torch.cat((query_key, value))


def interleave_gate_up_weight(weight: torch.Tensor) -> torch.Tensor:
    """gate_up_proj's weight [gate; up] as rows (gate_0, up_0, gate_1, up_1, ...)."""
    gate, up = weight.chunk(2)
    return torch.stack((gate, up), dim=1).reshape(weight.shape)


# What the kernels compute, in PyTorch (float32 throughout, one rounding at the output) -----------


def rope_qkv_reference(x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, positions: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
    """rope((x @ weight^T) * rstd) over adjacent column pairs; weight from `interleave_qkv_weight`."""
    product = (x.float() @ weight.float().t()) * rstd.float()[:, None]
    turns = frequencies[0::2].double() + frequencies[1::2].double()
    angles = positions.double()[:, None] * turns[None, :] * (2 * math.pi)
    cos, sin = angles.cos().float(), angles.sin().float()
    first, second = product[:, 0::2], product[:, 1::2]
    rotated = torch.stack((first * cos - second * sin, first * sin + second * cos), dim=-1)
    return rotated.flatten(1).to(x.dtype)


def residual_rms_reference(
    x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor, residual_rstd: torch.Tensor, eps: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """y = x @ weight^T + residual * residual_rstd, and 1 / rms(y) per row (from y before rounding)."""
    total = x.float() @ weight.float().t() + residual.float() * residual_rstd.float()[:, None]
    return total.to(x.dtype), torch.rsqrt(total.square().mean(-1) + eps)


def rstd_swiglu_reference(x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """silu(g) * u for (g, u) = (x @ weight^T) * rstd; weight from `interleave_gate_up_weight`."""
    product = (x.float() @ weight.float().t()) * rstd.float()[:, None]
    return (F.silu(product[:, 0::2]) * product[:, 1::2]).to(x.dtype)


class BlockKernels(NamedTuple):
    rope_qkv: Callable[..., torch.Tensor]
    residual_rms: Callable[..., Tuple[torch.Tensor, torch.Tensor]]
    rstd_swiglu: Callable[..., torch.Tensor]


REFERENCE = BlockKernels(rope_qkv_reference, residual_rms_reference, rstd_swiglu_reference)


# Cached: the ops look their kernel set up on every call, in the step's hot path.
@functools.cache
def _quack_kernels() -> BlockKernels:
    from models.kernels import quack_block

    return BlockKernels(quack_block.rope_qkv, quack_block.residual_rms, quack_block.rstd_swiglu)


# In order of preference; each entry builds its kernel set (ImportError: the package is missing).
BLOCK_KERNELS: dict[str, Callable[[], BlockKernels]] = {"quack": _quack_kernels}


def _self_check(build: Callable[[], BlockKernels], device: torch.device, dtype: torch.dtype) -> None:
    """Build a kernel set, run each kernel once on random inputs of a small block and compare it with its reference."""
    kernels = build()
    generator = torch.Generator(device=device).manual_seed(0)

    def random(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, device=device, generator=generator) * scale).to(dtype)

    # 300 rows leave a partial last row tile; two heads of 64; inner size 192.
    tokens, hidden, num_heads, head_dim, inner = 300, 128, 2, 64, 192
    x, residual = random(tokens, hidden), random(tokens, hidden)
    rstd = torch.rand(tokens, device=device, generator=generator) + 0.5
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    tables = rope_tables(inv_freq, 3, 100, num_heads, head_dim, device)
    cases = {
        "rope_qkv": (kernels.rope_qkv, rope_qkv_reference, (x, random(3 * hidden, hidden, scale=hidden**-0.5), rstd, *tables)),
        "residual_rms": (kernels.residual_rms, residual_rms_reference, (x, random(hidden, hidden, scale=hidden**-0.5), residual, rstd, 1e-5)),
        "rstd_swiglu": (kernels.rstd_swiglu, rstd_swiglu_reference, (x, random(2 * inner, hidden, scale=hidden**-0.5), rstd)),
    }
    check_against_references(cases)


def choose_block_kernels(device: torch.device, dtype: torch.dtype, kernels: dict[str, Callable[[], BlockKernels]] = BLOCK_KERNELS) -> Optional[str]:
    """The first kernel set that imports, runs and matches the references on this device, or None."""
    checks = {name: functools.partial(_self_check, build, device, dtype) for name, build in kernels.items()}
    return first_passing(checks, "Fused block kernels", device)


@functools.cache
def block_kernel_name(device_type: str, device_index: int, dtype: torch.dtype) -> Optional[str]:
    """The fused block kernels used on this device and activation dtype; None where none is usable."""
    if device_type != "cuda" or dtype not in FUSED_DTYPES:
        return None
    return choose_block_kernels(torch.device(device_type, device_index), dtype)


# torch.compile runs this once while tracing and keeps the answer as a constant.
@torch.compiler.assume_constant_result
def block_kernels_usable(device_type: str, device_index: int, dtype: torch.dtype) -> bool:
    return block_kernel_name(device_type, device_index, dtype) is not None


def use_fused_block(hidden_states: torch.Tensor) -> bool:
    """True on a device where the fused block kernels run correctly for these activations."""
    if hidden_states.device.type != "cuda":
        return False
    return block_kernels_usable(hidden_states.device.type, hidden_states.device.index or 0, hidden_states.dtype)


def _kernels_for(x: torch.Tensor) -> BlockKernels:
    # Off CUDA no kernel is chosen and the model never calls these ops; the CPU tests that call them
    # get the PyTorch reference.
    name = block_kernel_name(x.device.type, x.device.index or 0, x.dtype)
    return BLOCK_KERNELS[name]() if name else REFERENCE


# torch custom ops, so torch.compile treats each product as one call.


@torch.library.custom_op("hrm::rope_qkv", mutates_args=())
def rope_qkv(x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, positions: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
    """rope((x @ weight^T) * rstd) for x [tokens, hidden] and the interleaved qkv weight."""
    return _kernels_for(x).rope_qkv(x, weight, rstd, positions, frequencies)


@rope_qkv.register_fake
def _rope_qkv_shape(x, weight, rstd, positions, frequencies):
    return x.new_empty(x.shape[0], weight.shape[0])


@torch.library.custom_op("hrm::residual_rms", mutates_args=())
def residual_rms(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor, residual_rstd: torch.Tensor, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(y, 1 / rms(y)) for y = x @ weight^T + residual * residual_rstd."""
    return _kernels_for(x).residual_rms(x, weight, residual, residual_rstd, eps)


@residual_rms.register_fake
def _residual_rms_shape(x, weight, residual, residual_rstd, eps):
    return x.new_empty(x.shape[0], weight.shape[0]), residual_rstd.new_empty(x.shape[0])


@torch.library.custom_op("hrm::rstd_swiglu", mutates_args=())
def rstd_swiglu(x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """silu(g) * u for (g, u) = (x @ weight^T) * rstd, with the interleaved gate/up weight."""
    return _kernels_for(x).rstd_swiglu(x, weight, rstd)


@rstd_swiglu.register_fake
def _rstd_swiglu_shape(x, weight, rstd):
    return x.new_empty(x.shape[0], weight.shape[0] // 2)


# The qkv product with RoPE in the passes with gradient ------------------------------------------


def unrotate_pairs(grad: torch.Tensor, positions: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
    """The gradient of the qkv product before the epilogue's RoPE, from the gradient after it: each
    column pair rotated back by its angle (a rotation's transpose is its inverse)."""
    turns = frequencies[0::2] + frequencies[1::2]
    angles = positions[:, None] * turns[None, :] * (2 * math.pi)
    cos, sin = angles.cos(), angles.sin()
    first, second = grad[:, 0::2].float(), grad[:, 1::2].float()
    return torch.stack((first * cos + second * sin, second * cos - first * sin), dim=-1).flatten(1).to(grad.dtype)


class RopeQKVWithGradient(torch.autograd.Function):
    """rope(x @ weight^T) through the fused qkv + RoPE kernel, with its backward: for x [tokens, hidden]
    and the interleaved qkv weight. The product before RoPE is never written; like the PyTorch path,
    the backward keeps only x and the weight."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, positions: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight, positions, frequencies)
        no_pending_scale = torch.ones(x.shape[0], dtype=torch.float32, device=x.device)
        return rope_qkv(x, weight, no_pending_scale, positions, frequencies)

    @staticmethod
    def backward(ctx, grad_qkv: torch.Tensor):
        x, weight, positions, frequencies = ctx.saved_tensors
        grad_product = unrotate_pairs(grad_qkv, positions, frequencies)
        return grad_product @ weight, grad_product.t() @ x, None, None
