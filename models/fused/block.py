"""Kernel family "block": each post-norm block of a gradient-free pass in fused matrix-product epilogues.

HRM's block (and TRM's without mlp_t) is x <- rms(x + attn(x)); x <- rms(x + mlp(x)). On the
PyTorch path each step between the matrix products (RoPE, the two residual adds with their
RMSNorms, silu(gate) * up) is a pass over memory of its own. Here every one rides in a product's
epilogue, and the RMSNorms are deferred: the product that ends a residual sum writes the sum y
unnormalised together with sum(y^2) per row, and the products that read y scale their accumulators
by rstd = 1 / rms(y) (a row scale commutes with the product). One block, x arriving with its
pending scale rstd_x:

    qkv   = rope((x @ Wqkv^T) * rstd_x)
    o     = attention(q, k, v)
    y     = o @ Wo^T + x * rstd_x,         rstd_y = 1 / rms(y)
    inner = silu(g) * u,  (g, u) = (y @ Wgu^T) * rstd_y
    z     = inner @ Wd^T + y * rstd_y,     rstd_z = 1 / rms(z)

and the block hands (z, rstd_z) to the next; the reasoning module multiplies the scale out after
its last block. Of the ~28 reads and writes of a [tokens, hidden]-sized tensor per block on the
PyTorch path this leaves ~20.

Pairs: the epilogues work on adjacent columns (2j, 2j + 1). HRM's RoPE rotates dims (j, j + d/2)
("rotate half"), so the query and key rows of the qkv weight are interleaved to
(0, d/2, 1, d/2 + 1, ...); that permutes the head dims of q and k alike and leaves q . k, and so
the attention, unchanged. The gate/up weight is interleaved to (gate_0, up_0, gate_1, ...) for the
same reason.

The `*_reference` functions compute what the kernels compute, in PyTorch (float32 throughout, one
rounding at the output); a kernel set is used on a device only after it matched them there.
"""

import functools
import math
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from models.attention import attention
from models.hrm.hrm_act_v1 import HierarchicalReasoningModel_ACTV1ReasoningModule
from models.kernel_choice import check_against_references
from models.layers import Attention, CosSin


class RopeTables(NamedTuple):
    """What the qkv epilogue needs to rotate: every row's position and every column's frequency."""

    positions: torch.Tensor  # [tokens] float32, the row's position in its sequence
    # [3 * heads * head_dim] float32: per rotation pair (hi, lo), the float-float split of
    # inv_freq / (2 pi) (the epilogue's angles are in turns); zero over the value columns, and over
    # all columns without RoPE: a zero angle is an exact identity.
    frequencies: torch.Tensor


def rope_inv_freq(head_dim: int, base: float) -> torch.Tensor:
    """RoPE's inverse frequencies [head_dim / 2], as models.layers.RotaryEmbedding computes them."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def rope_positions(batch_size: int, seq_len: int, device: torch.device) -> torch.Tensor:
    return torch.arange(seq_len, dtype=torch.float32, device=device).repeat(batch_size)


def rope_tables(
    inv_freq: Optional[torch.Tensor], batch_size: int, seq_len: int, num_heads: int, head_dim: int, device: torch.device
) -> RopeTables:
    """The tables for `batch_size` sequences of `seq_len`; `inv_freq` [head_dim / 2] (None: no RoPE)."""
    frequencies = torch.zeros(3 * num_heads * head_dim, dtype=torch.float32, device=device)
    if inv_freq is not None:
        turns = inv_freq.to(device).double() / (2 * math.pi)
        high = turns.float()
        low = (turns - high.double()).float()
        per_head = torch.stack((high, low), dim=-1).reshape(head_dim)
        frequencies[: 2 * num_heads * head_dim] = per_head.repeat(2 * num_heads)
    return RopeTables(rope_positions(batch_size, seq_len, device), frequencies)


def fusable(module: HierarchicalReasoningModel_ACTV1ReasoningModule) -> bool:
    """Whether every block of a reasoning module is the post-norm attention block that
    `block_forward` computes (HRM's, and TRM's without mlp_t)."""
    return all(isinstance(getattr(layer, "self_attn", None), Attention) for layer in module.layers)


def supported(hidden_size: int, head_dim: int) -> bool:
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


# What the kernels compute, in PyTorch ---------------------------------------------------------------


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
    from models.fused import quack_block

    return BlockKernels(quack_block.rope_qkv, quack_block.residual_rms, quack_block.rstd_swiglu)


# Kernel name -> its kernel set, in order of preference (ImportError: the package is missing).
BLOCK_KERNELS: Dict[str, Callable[[], BlockKernels]] = {"quack": _quack_kernels}


def check_kernels(build: Callable[[], BlockKernels], device: torch.device, dtype: torch.dtype) -> None:
    """Build a kernel set, run each kernel once on random inputs of a small block and compare it with its reference."""
    kernels = build()
    generator = torch.Generator(device=device).manual_seed(0)

    def random(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, device=device, generator=generator) * scale).to(dtype)

    # 300 rows leave a partial last row tile; two heads of 64; inner size 192.
    tokens, hidden, num_heads, head_dim, inner = 300, 128, 2, 64, 192
    x, residual = random(tokens, hidden), random(tokens, hidden)
    rstd = torch.rand(tokens, device=device, generator=generator) + 0.5
    tables = rope_tables(rope_inv_freq(head_dim, 10000.0), 3, 100, num_heads, head_dim, device)
    check_against_references({
        "rope_qkv": (kernels.rope_qkv, rope_qkv_reference, (x, random(3 * hidden, hidden, scale=hidden**-0.5), rstd, *tables)),
        "residual_rms": (kernels.residual_rms, residual_rms_reference, (x, random(hidden, hidden, scale=hidden**-0.5), residual, rstd, 1e-5)),
        "rstd_swiglu": (kernels.rstd_swiglu, rstd_swiglu_reference, (x, random(2 * inner, hidden, scale=hidden**-0.5), rstd)),
    })


# The products as torch custom ops, so torch.compile treats each as one call; `kernels` names the
# kernel set in BLOCK_KERNELS.


@torch.library.custom_op("hrm::rope_qkv", mutates_args=())
def rope_qkv(x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, positions: torch.Tensor, frequencies: torch.Tensor, kernels: str) -> torch.Tensor:
    """rope((x @ weight^T) * rstd) for x [tokens, hidden] and the interleaved qkv weight."""
    return BLOCK_KERNELS[kernels]().rope_qkv(x, weight, rstd, positions, frequencies)


@rope_qkv.register_fake
def _rope_qkv_shape(x, weight, rstd, positions, frequencies, kernels):
    return x.new_empty(x.shape[0], weight.shape[0])


@torch.library.custom_op("hrm::residual_rms", mutates_args=())
def residual_rms(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor, residual_rstd: torch.Tensor, eps: float,
                 kernels: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(y, 1 / rms(y)) for y = x @ weight^T + residual * residual_rstd."""
    return BLOCK_KERNELS[kernels]().residual_rms(x, weight, residual, residual_rstd, eps)


@residual_rms.register_fake
def _residual_rms_shape(x, weight, residual, residual_rstd, eps, kernels):
    return x.new_empty(x.shape[0], weight.shape[0]), residual_rstd.new_empty(x.shape[0])


@torch.library.custom_op("hrm::rstd_swiglu", mutates_args=())
def rstd_swiglu(x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, kernels: str) -> torch.Tensor:
    """silu(g) * u for (g, u) = (x @ weight^T) * rstd, with the interleaved gate/up weight."""
    return BLOCK_KERNELS[kernels]().rstd_swiglu(x, weight, rstd)


@rstd_swiglu.register_fake
def _rstd_swiglu_shape(x, weight, rstd, kernels):
    return x.new_empty(x.shape[0], weight.shape[0] // 2)


# The module -----------------------------------------------------------------------------------------


def block_forward(
    block: nn.Module, x: torch.Tensor, rstd: torch.Tensor, seq_len: int, tables: RopeTables, kernels: str
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One attention block (see `fusable`) in fused epilogues: x [tokens, hidden] arrives before its
    pending RMSNorm scale rstd [tokens] and the output leaves the same way."""
    attn, mlp, dtype = block.self_attn, block.mlp, x.dtype
    qkv_weight = interleave_qkv_weight(attn.qkv_proj.weight.to(dtype), attn.num_heads, attn.head_dim)
    qkv = rope_qkv(x, qkv_weight, rstd, tables.positions, tables.frequencies, kernels)
    query, key, value = qkv.view(-1, seq_len, 3 * attn.num_heads, attn.head_dim).split(attn.num_heads, dim=2)
    attended = attention(query, key, value).reshape(x.shape[0], -1)
    after_attn, after_attn_rstd = residual_rms(attended, attn.o_proj.weight.to(dtype), x, rstd, block.norm_eps, kernels)
    inner = rstd_swiglu(after_attn, interleave_gate_up_weight(mlp.gate_up_proj.weight.to(dtype)), after_attn_rstd, kernels)
    return residual_rms(inner, mlp.down_proj.weight.to(dtype), after_attn, after_attn_rstd, block.norm_eps, kernels)


class FusedReasoningModule(HierarchicalReasoningModel_ACTV1ReasoningModule):
    """A reasoning module whose gradient-free passes run its blocks through `block_forward`, the
    RMSNorms deferred from block to block; passes with gradient run the module's own forward. It
    holds the same blocks, so its parameters and state-dict keys are the replaced module's."""

    def __init__(self, module: HierarchicalReasoningModel_ACTV1ReasoningModule, kernels: str, tables: RopeTables):
        super().__init__(list(module.layers))
        self.kernels = kernels
        # Fixed by the model's shape (tables of one training batch), so not saved in checkpoints.
        self.register_buffer("positions", tables.positions, persistent=False)
        self.register_buffer("frequencies", tables.frequencies, persistent=False)

    def forward(self, hidden_states: torch.Tensor, input_injection: torch.Tensor, cos_sin: Optional[CosSin]) -> torch.Tensor:
        if torch.is_grad_enabled():
            return super().forward(hidden_states, input_injection, cos_sin)
        hidden_states = hidden_states + input_injection
        batch_size, seq_len, hidden_size = hidden_states.shape
        rows = batch_size * seq_len
        # Batches of another size than the training batch (evaluation) get their own positions.
        positions = self.positions if self.positions.numel() == rows else rope_positions(batch_size, seq_len, hidden_states.device)
        tables = RopeTables(positions, self.frequencies)
        x, rstd = hidden_states.reshape(rows, hidden_size), torch.ones(rows, dtype=torch.float32, device=hidden_states.device)
        for layer in self.layers:
            x, rstd = block_forward(layer, x, rstd, seq_len, tables, self.kernels)
        # The last block's RMSNorm, applied as rms_norm rounds it.
        return (x.float() * rstd[:, None]).to(x.dtype).view(batch_size, seq_len, hidden_size)
