"""Non-causal softmax attention over [batch, seq, heads, head_dim] tensors, through the fastest
backend that works here.

    out = attention(query, key, value)

Backends: FlashAttention 3 (Hopper), 4 (Hopper and newer, long sequences) or 2 (Ampere and newer)
where its package is installed, otherwise PyTorch's scaled_dot_product_attention (SDPA). The choice
is made once per (device, dtype, head_dim, seq_len), at the first call: each candidate in turn is
imported and checked against SDPA on small random inputs (models/kernel_choice.py). torch.compile
keeps the answer as a constant, so neither the imports nor the check enter a graph. CPU and float32
use never import a FlashAttention package.
"""

import contextlib
import functools
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F

from models.kernel_choice import check_against_references, choose_kernel

SDPA = "sdpa"
FLASH_ATTN_2 = "flash_attn_2"
FLASH_ATTN_3 = "flash_attn_3"
FLASH_ATTN_4 = "flash_attn_4"
FLASH_BACKENDS = (FLASH_ATTN_2, FLASH_ATTN_3, FLASH_ATTN_4)

_FLASH_DTYPES = (torch.float16, torch.bfloat16)
# FlashAttention 4 beats SDPA's cuDNN kernel at the maze and ARC length (901 positions) but loses at
# the Sudoku length (82), docs/performance.md; lengths in between were not measured.
FLASH_ATTN_4_MIN_SEQ_LEN = 512

_flash_funcs: Dict[str, Callable] = {}  # each FlashAttention backend's function, once imported
_forced_backend: Optional[str] = None


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Non-causal softmax attention; query, key and value are [batch, seq, heads, head_dim]."""
    backend = _select_backend(query.device.type, query.device.index or 0, query.dtype, query.shape[-1], query.shape[1])
    if backend == SDPA:
        return _sdpa(query, key, value)
    return _flash(_flash_funcs[backend], query, key, value)


def attention_backend(seq_len: int, device=None, dtype: torch.dtype = torch.bfloat16, head_dim: int = 64) -> str:
    """The backend `attention` uses for q/k/v of this sequence length, device, dtype and head size:
    "flash_attn_3", "flash_attn_4", "flash_attn_2" or "sdpa". The device defaults to the current CUDA
    device when there is one, else the CPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _select_backend(device.type, device.index or 0, dtype, head_dim, seq_len)


@contextlib.contextmanager
def forced_backend(backend: str) -> Iterator[None]:
    """Run attention through `backend` ("sdpa" or one of FLASH_BACKENDS) whatever the choice would be,
    to compare backends (benchmarks/train_step.py). A graph compiled inside keeps this backend.
    Raises ImportError where the FlashAttention package does not import."""
    global _forced_backend
    if backend != SDPA:
        _flash_funcs[backend] = _import_flash(backend)
    previous, _forced_backend = _forced_backend, backend
    try:
        yield
    finally:
        _forced_backend = previous


# torch.compile calls this once while tracing and keeps the answer as a constant.
@torch.compiler.assume_constant_result
def _select_backend(device_type: str, device_index: int, dtype: torch.dtype, head_dim: int, seq_len: int) -> str:
    if _forced_backend is not None:
        return _forced_backend
    device = torch.device(device_type, device_index)
    checks = functools.partial(_flash_checks, device, dtype, head_dim, seq_len)
    return choose_kernel("Attention backend", device, (dtype, head_dim, seq_len), checks) or SDPA


def _flash_checks(device: torch.device, dtype: torch.dtype, head_dim: int, seq_len: int) -> Dict[str, Callable[[], None]]:
    """The FlashAttention backends worth trying here, in order of preference, each as its check."""
    if device.type != "cuda" or dtype not in _FLASH_DTYPES or head_dim % 8 != 0 or head_dim > 256:
        return {}
    major, _minor = torch.cuda.get_device_capability(device.index)
    backends = [FLASH_ATTN_3] if major == 9 else []
    if major >= 9 and seq_len >= FLASH_ATTN_4_MIN_SEQ_LEN:
        backends.append(FLASH_ATTN_4)
    if major >= 8:
        backends.append(FLASH_ATTN_2)
    return {backend: functools.partial(_check_flash, backend, device, dtype, head_dim) for backend in backends}


def _check_flash(backend: str, device: torch.device, dtype: torch.dtype, head_dim: int) -> None:
    """Import a FlashAttention backend, run it once on small random inputs and compare it with SDPA."""
    func = _import_flash(backend)
    generator = torch.Generator(device=device).manual_seed(0)
    query, key, value = (torch.randn(2, 16, 2, head_dim, device=device, generator=generator).to(dtype) for _ in range(3))
    check_against_references({backend: (functools.partial(_flash, func), _sdpa, (query, key, value))})
    _flash_funcs[backend] = func


def _import_flash(backend: str) -> Callable:
    """A FlashAttention package's attention function; ImportError where the package is missing."""
    if backend == FLASH_ATTN_4:
        import flash_attn.cute.interface  # noqa: F401  (what the custom ops below call)

        return flash_attn_4_func
    if backend == FLASH_ATTN_3:
        from flash_attn_interface import flash_attn_func
    else:
        from flash_attn import flash_attn_func
    return flash_attn_func


def _sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """PyTorch SDPA in the [batch, seq, heads, head_dim] layout (SDPA itself wants [batch, heads, seq, head_dim])."""
    out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
    return out.transpose(1, 2)


def _flash(func: Callable, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A FlashAttention function, non-causal; some FlashAttention 3 releases return (out, softmax_lse)."""
    out = func(query, key, value, causal=False)
    return out[0] if isinstance(out, tuple) else out


# FlashAttention 4 ----------------------------------------------------------------------------------
# The flash-attn-4 package (CuTe-DSL kernels for Hopper and Blackwell) as PyTorch custom ops. Its own
# flash_attn_func is an autograd.Function whose forward runs the CuTe-DSL JIT, which torch.compile
# cannot trace: every attention call would split the graph. The ops call the package's forward and
# backward entry points and tell the compiler only the shapes of what they return. The package is
# imported when an op first runs, so defining the ops needs nothing installed.


@torch.library.custom_op("hrm::flash_attn_4_forward", mutates_args=())
def _flash_attn_4_forward(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    from flash_attn.cute.interface import _flash_attn_fwd

    out, softmax_lse = _flash_attn_fwd(query, key, value, causal=False, return_lse=True)[:2]
    return out, softmax_lse


@_flash_attn_4_forward.register_fake
def _flash_attn_4_forward_shapes(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    batch_size, seq_len, num_heads, _ = query.shape
    out = query.new_empty(batch_size, seq_len, num_heads, value.shape[-1])
    return out, query.new_empty(batch_size, num_heads, seq_len, dtype=torch.float32)


@torch.library.custom_op("hrm::flash_attn_4_backward", mutates_args=())
def _flash_attn_4_backward(grad_out: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           out: torch.Tensor, softmax_lse: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from flash_attn.cute.interface import _flash_attn_bwd

    grad_query, grad_key, grad_value = _flash_attn_bwd(query, key, value, out, grad_out, softmax_lse, causal=False)
    return grad_query, grad_key, grad_value


@_flash_attn_4_backward.register_fake
def _flash_attn_4_backward_shapes(grad_out: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                  out: torch.Tensor, softmax_lse: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return query.new_empty(query.shape), key.new_empty(key.shape), value.new_empty(value.shape)


def _save_for_backward(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs, *output)


def _flash_attn_4_gradients(ctx, grad_out: torch.Tensor, grad_softmax_lse: torch.Tensor):
    query, key, value, out, softmax_lse = ctx.saved_tensors
    # The kernels need the last dimension contiguous; the compiled backward may hand over any layout.
    return _flash_attn_4_backward(grad_out.contiguous(), query, key, value, out, softmax_lse)


_flash_attn_4_forward.register_autograd(_flash_attn_4_gradients, setup_context=_save_for_backward)


def flash_attn_4_func(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """FlashAttention 4, non-causal, over [batch, seq, heads, head_dim] half-precision CUDA tensors."""
    if causal:
        raise ValueError("HRM's attention is non-causal; flash_attn_4_func implements only that")
    return _flash_attn_4_forward(query, key, value)[0]
