"""Fused Triton kernels for the gradient-free forward passes on CUDA GPUs.

Most of an HRM training step runs without gradient: all but the last L and H updates of a segment,
and the whole extra segment that gives the Q-learning target. In those passes three fusions save
most of the memory traffic between matrix products:
- `fused_swiglu`: the gate/up projection and silu(gate) * up in one kernel, so the [tokens, 2 * inner]
  gate/up tensor is never written;
- `fused_rope_attention`: attention that reads q, k, v from the qkv projection and rotates q and k on
  load, so RoPE needs no pass of its own;
- `fused_linear_add_rms_norm`: an output projection with the residual add and RMSNorm after it, so
  the projection's output is never written.
Passes with gradient keep the PyTorch path, whose backward autograd and torch.compile provide.

The kernels are torch custom ops, so torch.compile treats them as single calls. `kernels_usable`
says whether they can run on a device: Triton imports and all kernels match their PyTorch
references on random inputs there; otherwise the layers fall back to PyTorch.
"""

import functools
import warnings
from typing import Optional

import torch

_FUSED_DTYPES = (torch.float16, torch.bfloat16)


# Shapes each kernel handles (their launchers raise for others); layers whose shapes fall outside
# keep the PyTorch path.
def swiglu_supported(hidden_size: int, inner_size: int) -> bool:
    return hidden_size % 16 == 0 and inner_size % 16 == 0


def rope_attention_supported(head_dim: int) -> bool:
    return head_dim in (32, 64, 128)


def linear_norm_supported(in_features: int, out_features: int) -> bool:
    return in_features % 16 == 0 and 16 <= out_features <= 1024 and out_features & (out_features - 1) == 0


@torch.library.custom_op("hrm::swiglu", mutates_args=())
def fused_swiglu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """silu(x @ gate^T) * (x @ up^T) for x [tokens, hidden] and weight [2 * inner, hidden] = [gate; up]."""
    from models.kernels import swiglu as swiglu_kernel

    return swiglu_kernel.swiglu(x, weight)


@fused_swiglu.register_fake
def _swiglu_shape(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], weight.shape[0] // 2)


@torch.library.custom_op("hrm::rope_attention", mutates_args=())
def fused_rope_attention(qkv: torch.Tensor, num_heads: int, cos: Optional[torch.Tensor], sin: Optional[torch.Tensor]) -> torch.Tensor:
    """Non-causal attention of qkv [batch, seq, 3 * heads * head_dim] with RoPE on q and k; [batch, seq, heads * head_dim]."""
    from models.kernels import rope_attention as attention_kernel

    return attention_kernel.rope_attention(qkv, num_heads, cos, sin)


@fused_rope_attention.register_fake
def _rope_attention_shape(qkv: torch.Tensor, num_heads: int, cos: Optional[torch.Tensor], sin: Optional[torch.Tensor]) -> torch.Tensor:
    return qkv.new_empty(qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3)


@torch.library.custom_op("hrm::linear_add_rms_norm", mutates_args=())
def fused_linear_add_rms_norm(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor, eps: float) -> torch.Tensor:
    """rms_norm(residual + x @ weight^T) for x [tokens, in], weight [out, in], residual [tokens, out]."""
    from models.kernels import linear_norm as linear_norm_kernel

    return linear_norm_kernel.linear_add_rms_norm(x, weight, residual, eps)


@fused_linear_add_rms_norm.register_fake
def _linear_add_rms_norm_shape(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor, eps: float) -> torch.Tensor:
    return residual.new_empty(residual.shape)


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.float() - reference.float()).norm() / reference.float().norm()).item()


def _self_check(device: torch.device, dtype: torch.dtype) -> None:
    """Run each kernel once on random inputs and compare with its PyTorch reference."""
    from models.kernels import linear_norm as linear_norm_kernel
    from models.kernels import rope_attention as attention_kernel
    from models.kernels import swiglu as swiglu_kernel

    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(300, 64, device=device, generator=generator).to(dtype)
    weight = (torch.randn(2 * 96, 64, device=device, generator=generator) / 8).to(dtype)
    error = _relative_error(swiglu_kernel.swiglu(x, weight), swiglu_kernel.swiglu_reference(x, weight))
    if not error < 2e-2:
        raise RuntimeError(f"fused SwiGLU differs from PyTorch by {error:.3g} (relative)")

    num_heads, head_dim, seq_len = 2, 64, 150
    qkv = torch.randn(3, seq_len, 3 * num_heads * head_dim, device=device, generator=generator).to(dtype)
    angles = torch.rand(seq_len, head_dim, device=device, generator=generator) * 6.3
    cos, sin = angles.cos(), angles.sin()
    error = _relative_error(
        attention_kernel.rope_attention(qkv, num_heads, cos, sin), attention_kernel.rope_attention_reference(qkv, num_heads, cos, sin)
    )
    if not error < 2e-2:
        raise RuntimeError(f"fused RoPE attention differs from PyTorch by {error:.3g} (relative)")

    residual = torch.randn(300, 128, device=device, generator=generator).to(dtype)
    projection = (torch.randn(128, 64, device=device, generator=generator) / 8).to(dtype)
    error = _relative_error(
        linear_norm_kernel.linear_add_rms_norm(x, projection, residual, 1e-5),
        linear_norm_kernel.linear_add_rms_norm_reference(x, projection, residual, 1e-5),
    )
    if not error < 2e-2:
        raise RuntimeError(f"fused projection + residual + RMSNorm differs from PyTorch by {error:.3g} (relative)")


@functools.cache
def _usable(device_type: str, device_index: int, dtype: torch.dtype) -> bool:
    if device_type != "cuda" or dtype not in _FUSED_DTYPES:
        return False
    try:
        _self_check(torch.device(device_type, device_index), dtype)
    except ImportError:
        return False  # no Triton: the plain PyTorch path is the intended fallback
    except Exception as error:  # a Triton or driver failure on this GPU: warn, then fall back
        warnings.warn(f"Fused Triton kernels disabled on {device_type}:{device_index} ({type(error).__name__}: {error}); using PyTorch layers.")
        return False
    return True


# torch.compile runs this once while tracing and keeps the answer as a constant.
@torch.compiler.assume_constant_result
def kernels_usable(device_type: str, device_index: int, dtype: torch.dtype) -> bool:
    """Whether the fused kernels run correctly for this device and activation dtype."""
    return _usable(device_type, device_index, dtype)


def use_fused_kernels(hidden_states: torch.Tensor) -> bool:
    """True in gradient-free passes on a device where the fused kernels are usable."""
    if torch.is_grad_enabled() or hidden_states.device.type != "cuda":
        return False
    return kernels_usable(hidden_states.device.type, hidden_states.device.index or 0, hidden_states.dtype)
