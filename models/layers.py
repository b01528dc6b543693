"""Transformer building blocks of HRM: casted linear/embedding, RoPE, attention, SwiGLU, RMSNorm.

Weights live in float32 and are cast to the activations' dtype where they are used, so the forward
can run in bfloat16 while the optimiser keeps float32 weights. Tensors are laid out
[batch, seq, heads, head_dim] as FlashAttention wants them.
"""

import warnings
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from models.common import trunc_normal_init_
from models.kernels import fused_swiglu, relative_error, swiglu_supported, use_fused_kernels
from models.kernels.block import interleave_gate_up_weight
from models.kernels.mlp import FusedSwiGLUMLP, use_fused_mlp

CosSin = Tuple[torch.Tensor, torch.Tensor]


# Attention backend -------------------------------------------------------------------------------
# FlashAttention 3 (Hopper), 4 (Hopper and newer, long sequences) or 2 (Ampere and newer) when
# installed and usable for the tensors at hand, otherwise PyTorch's scaled_dot_product_attention.
# Importing flash-attn happens only here, on the first CUDA half-precision call, so CPU use never
# needs the package; a package that imports but fails or disagrees with SDPA on a small check is
# skipped with a warning.

FLASH_ATTN_4 = "flash_attn_4"
FLASH_ATTN_3 = "flash_attn_3"
FLASH_ATTN_2 = "flash_attn_2"
SDPA = "sdpa"
FLASH_BACKENDS = (FLASH_ATTN_2, FLASH_ATTN_3, FLASH_ATTN_4)

_FLASH_DTYPES = (torch.float16, torch.bfloat16)
# FlashAttention 4 beats SDPA's cuDNN kernel on an H200 at the maze/ARC length (901: 1.18x, forward
# and backward) but loses at the Sudoku length (82: 1.5x slower), docs/performance.md; lengths in
# between were not measured.
FLASH_ATTN_4_MIN_SEQ_LEN = 512
_flash_funcs: Dict[str, Callable] = {}
_backend_cache: Dict[tuple, str] = {}


def _import_flash(backend: str) -> Optional[Callable]:
    try:
        if backend == FLASH_ATTN_4:
            from models.flash_attn_4 import flash_attn_4_func as flash_attn_func
        elif backend == FLASH_ATTN_3:
            from flash_attn_interface import flash_attn_func
        else:
            from flash_attn import flash_attn_func
    except Exception:  # missing, or built against another torch/CUDA (ImportError, OSError, ...)
        return None
    return flash_attn_func


def _sdpa_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """PyTorch SDPA over [batch, seq, heads, head_dim] tensors (SDPA itself wants [batch, heads, seq, head_dim])."""
    out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
    return out.transpose(1, 2)


def _flash_attention(func: Callable, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A FlashAttention package's non-causal attention; some FlashAttention 3 releases return (out, softmax_lse)."""
    out = func(query, key, value, causal=False)
    return out[0] if isinstance(out, tuple) else out


def _flash_works(backend: str, func: Callable, device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Run a FlashAttention function once on small random inputs and compare it with SDPA."""
    generator = torch.Generator(device=device).manual_seed(0)
    query, key, value = (torch.randn(2, 16, 2, head_dim, device=device, generator=generator).to(dtype) for _ in range(3))
    expected = _sdpa_attention(query, key, value)
    try:
        out = _flash_attention(func, query, key, value)
        error = relative_error(out, expected)
    except Exception as failure:  # a kernel or JIT failure on this GPU: warn, then try the next backend
        warnings.warn(f"{backend} imports but fails on {device} ({type(failure).__name__}: {failure}); not using it.")
        return False
    if not error < 2e-2:
        warnings.warn(f"{backend} differs from PyTorch SDPA by {error:.3g} (relative) on {device}; not using it.")
        return False
    return True


# torch.compile calls this once while tracing and keeps the answer as a constant, so the imports and
# device queries inside never enter the graph.
@torch.compiler.assume_constant_result
def _select_backend(device_type: str, device_index: int, dtype: torch.dtype, head_dim: int, seq_len: int) -> str:
    key = (device_type, device_index, dtype, head_dim, seq_len)
    if key not in _backend_cache:
        _backend_cache[key] = _find_backend(device_type, device_index, dtype, head_dim, seq_len)
    return _backend_cache[key]


def _find_backend(device_type: str, device_index: int, dtype: torch.dtype, head_dim: int, seq_len: int) -> str:
    if device_type != "cuda" or dtype not in _FLASH_DTYPES or head_dim % 8 != 0 or head_dim > 256:
        return SDPA
    major, _minor = torch.cuda.get_device_capability(device_index)
    candidates = [FLASH_ATTN_3] if major == 9 else []
    if major >= 9 and seq_len >= FLASH_ATTN_4_MIN_SEQ_LEN:
        candidates.append(FLASH_ATTN_4)
    if major >= 8:
        candidates.append(FLASH_ATTN_2)
    for backend in candidates:
        func = _import_flash(backend)
        if func is not None and _flash_works(backend, func, torch.device(device_type, device_index), dtype, head_dim):
            _flash_funcs[backend] = func
            return backend
    return SDPA


def attention_backend(seq_len: int, device=None, dtype: torch.dtype = torch.bfloat16, head_dim: int = 64) -> str:
    """Name of the attention backend used for q/k/v of this sequence length, device, dtype and head size.

    One of "flash_attn_3", "flash_attn_4", "flash_attn_2", "sdpa". The device defaults to the current
    CUDA device when there is one, else the CPU.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _select_backend(device.type, device.index or 0, dtype, head_dim, seq_len)


def _attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Non-causal softmax attention over [batch, seq, heads, head_dim] tensors."""
    backend = _select_backend(query.device.type, query.device.index or 0, query.dtype, query.shape[-1], query.shape[1])
    if backend == SDPA:
        return _sdpa_attention(query, key, value)
    return _flash_attention(_flash_funcs[backend], query, key, value)


# Layers ------------------------------------------------------------------------------------------


def _find_multiple(a: int, b: int) -> int:
    return -(a // -b) * b


def rms_norm(hidden_states: torch.Tensor, variance_epsilon: float) -> torch.Tensor:
    """RMSNorm without a learned scale, computed in float32 whatever the input dtype."""
    input_dtype = hidden_states.dtype
    hidden_states = hidden_states.to(torch.float32)
    variance = hidden_states.square().mean(-1, keepdim=True)
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
        # Derived from the config, so not saved in checkpoints. The fused block kernels rotate with
        # inv_freq itself (models/kernels/block.py).
        self.register_buffer("inv_freq", inv_freq, persistent=False)
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
        return self.o_proj(self.attend(self.qkv_proj(hidden_states), cos_sin))

    def attend(self, qkv: torch.Tensor, cos_sin: Optional[CosSin] = None) -> torch.Tensor:
        """Attention from the qkv projection [batch, seq, 3 * hidden] to o_proj's input [batch, seq, hidden]."""
        batch_size, seq_len, _ = qkv.shape
        query, key, value = qkv.view(batch_size, seq_len, 3 * self.num_heads, self.head_dim).split(self.num_heads, dim=2)
        if cos_sin is not None:
            query, key = apply_rotary_pos_emb(query, key, *cos_sin)
        return _attention(query, key, value).reshape(batch_size, seq_len, self.num_heads * self.head_dim)


class SwiGLU(nn.Module):
    """Gated MLP: down(silu(gate) * up), inner size 2/3 * expansion * hidden rounded up to 256.

    With `fused`, on a GPU, gradient-free passes compute silu(gate) * up in the gate/up product's
    kernel, never writing gate and up to memory, and passes with gradient run the activation and its
    backward in quack's epilogues (models/kernels/mlp.py).
    """

    def __init__(self, hidden_size: int, expansion: float, fused: bool = False):
        super().__init__()
        inner_size = _find_multiple(round(expansion * hidden_size * 2 / 3), 256)
        self.fused = fused and swiglu_supported(hidden_size, inner_size)
        # Benchmarks turn this off to time the gradient-free kernels alone.
        self.fused_with_gradient = self.fused
        self.gate_up_proj = CastedLinear(hidden_size, 2 * inner_size, bias=False)
        self.down_proj = CastedLinear(inner_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused and use_fused_kernels(x):
            inner = fused_swiglu(x.reshape(-1, x.shape[-1]), self.gate_up_proj.weight.to(x.dtype))
            return self.down_proj(inner.view(*x.shape[:-1], inner.shape[-1]))
        if self.fused_with_gradient and use_fused_mlp(x):
            gate_up_weight = interleave_gate_up_weight(self.gate_up_proj.weight.to(x.dtype))
            out = FusedSwiGLUMLP.apply(x.reshape(-1, x.shape[-1]), gate_up_weight, self.down_proj.weight.to(x.dtype))
            return out.view(*x.shape[:-1], out.shape[-1])
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)
