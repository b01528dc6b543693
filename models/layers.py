"""Transformer building blocks of HRM: casted linear/embedding, RoPE, attention, SwiGLU, RMSNorm.

Weights live in float32 and are cast to the activations' dtype where they are used, so the forward
can run in bfloat16 while the optimiser keeps float32 weights. Tensors are laid out
[batch, seq, heads, head_dim] as FlashAttention wants them.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from models.attention import attention
from models.common import trunc_normal_init_

CosSin = Tuple[torch.Tensor, torch.Tensor]


def _find_multiple(a: int, b: int) -> int:
    return -(a // -b) * b


def rms_norm(hidden_states: torch.Tensor, variance_epsilon: float, dim: int = -1) -> torch.Tensor:
    """RMSNorm over `dim` without a learned scale, computed in float32 whatever the input dtype."""
    input_dtype = hidden_states.dtype
    hidden_states = hidden_states.to(torch.float32)
    variance = hidden_states.square().mean(dim, keepdim=True)
    return (hidden_states * torch.rsqrt(variance + variance_epsilon)).to(input_dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first_half, second_half = x.chunk(2, dim=-1)
    return torch.cat((-second_half, first_half), dim=-1)


def apply_rotary_pos_emb(query: torch.Tensor, key: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """RoPE (rotate-half convention) on [batch, seq, heads, head_dim]; cos/sin are [seq, head_dim].

    The rotation runs in cos/sin's dtype (float32) and the result goes back to the input dtype.
    """
    dtype = query.dtype
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    query, key = query.to(cos.dtype), key.to(cos.dtype)
    query = query * cos + rotate_half(query) * sin
    key = key * cos + rotate_half(key) * sin
    return query.to(dtype), key.to(dtype)


class CastedLinear(nn.Module):
    """Linear layer with LeCun truncated-normal weights (std 1/sqrt(fan_in)) cast to the input dtype."""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_init_(torch.empty(out_features, in_features), std=in_features**-0.5))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(input.dtype) if self.bias is not None else None
        return F.linear(input, self.weight.to(input.dtype), bias)


class CastedEmbedding(nn.Module):
    """Embedding table with truncated-normal init, looked up in `cast_to`."""

    def __init__(self, num_embeddings: int, embedding_dim: int, init_std: float, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.embedding_weight = nn.Parameter(trunc_normal_init_(torch.empty(num_embeddings, embedding_dim), std=init_std))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.embedding(input, self.embedding_weight.to(self.cast_to))


class RotaryEmbedding(nn.Module):
    """Precomputed RoPE cos/sin tables, [max_position_embeddings, dim], in float32."""

    def __init__(self, dim: int, max_position_embeddings: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        positions = torch.arange(max_position_embeddings, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        angles = torch.cat((freqs, freqs), dim=-1)
        # Derived from the config, so not saved in checkpoints.
        self.register_buffer("cos_cached", angles.cos(), persistent=False)
        self.register_buffer("sin_cached", angles.sin(), persistent=False)

    def forward(self) -> CosSin:
        return self.cos_cached, self.sin_cached


class Attention(nn.Module):
    """Non-causal multi-head self-attention: fused qkv projection, optional RoPE, output projection."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        # Output rows are [all query heads | all key heads | all value heads], as in the original.
        self.qkv_proj = CastedLinear(hidden_size, 3 * num_heads * self.head_dim, bias=False)
        self.o_proj = CastedLinear(num_heads * self.head_dim, hidden_size, bias=False)

    def forward(self, cos_sin: Optional[CosSin], hidden_states: torch.Tensor) -> torch.Tensor:
        batch_size, seq_len, _ = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(batch_size, seq_len, 3 * self.num_heads, self.head_dim)
        query, key, value = qkv.split(self.num_heads, dim=2)
        if cos_sin is not None:
            query, key = apply_rotary_pos_emb(query, key, *cos_sin)
        attn_output = attention(query, key, value)
        return self.o_proj(attn_output.reshape(batch_size, seq_len, self.num_heads * self.head_dim))


class SwiGLU(nn.Module):
    """Gated MLP: down(silu(gate) * up), inner size 2/3 * expansion * hidden rounded up to 256."""

    def __init__(self, hidden_size: int, expansion: float):
        super().__init__()
        inner_size = _find_multiple(round(expansion * hidden_size * 2 / 3), 256)
        self.gate_up_proj = CastedLinear(hidden_size, 2 * inner_size, bias=False)
        self.down_proj = CastedLinear(inner_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)
