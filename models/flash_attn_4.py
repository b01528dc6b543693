"""FlashAttention 4 (the `flash-attn-4` package: CuTe-DSL kernels for Hopper and Blackwell GPUs) as
PyTorch custom ops, so that torch.compile keeps it inside the compiled graph.

The package's own `flash_attn_func` is a torch.autograd.Function whose forward runs the CuTe-DSL JIT,
which torch.compile cannot trace: every attention call would split the graph. The two ops below call
the package's forward and backward entry points directly and tell the compiler only the shapes of
what they return. Importing this module needs the package; models.layers imports it only on a GPU.
"""

from typing import Tuple

import torch
from flash_attn.cute.interface import _flash_attn_bwd, _flash_attn_fwd


@torch.library.custom_op("hrm::flash_attn_4_forward", mutates_args=())
def _forward(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    out, softmax_lse = _flash_attn_fwd(query, key, value, causal=False, return_lse=True)[:2]
    return out, softmax_lse


@_forward.register_fake
def _forward_shapes(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    batch_size, seq_len, num_heads, _ = query.shape
    out = query.new_empty(batch_size, seq_len, num_heads, value.shape[-1])
    return out, query.new_empty(batch_size, num_heads, seq_len, dtype=torch.float32)


@torch.library.custom_op("hrm::flash_attn_4_backward", mutates_args=())
def _backward(grad_out: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              out: torch.Tensor, softmax_lse: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad_query, grad_key, grad_value = _flash_attn_bwd(query, key, value, out, grad_out, softmax_lse, causal=False)
    return grad_query, grad_key, grad_value


@_backward.register_fake
def _backward_shapes(grad_out: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     out: torch.Tensor, softmax_lse: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return query.new_empty(query.shape), key.new_empty(key.shape), value.new_empty(value.shape)


def _save_for_backward(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs, *output)


def _gradients(ctx, grad_out: torch.Tensor, grad_softmax_lse: torch.Tensor):
    query, key, value, out, softmax_lse = ctx.saved_tensors
    # The kernels need the last dimension contiguous; the compiled backward may hand over any layout.
    return _backward(grad_out.contiguous(), query, key, value, out, softmax_lse)


_forward.register_autograd(_gradients, setup_context=_save_for_backward)


def flash_attn_4_func(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """Non-causal softmax attention over [batch, seq, heads, head_dim] half-precision CUDA tensors."""
    if causal:
        raise ValueError("HRM's attention is non-causal; flash_attn_4_func implements only that")
    return _forward(query, key, value)[0]
