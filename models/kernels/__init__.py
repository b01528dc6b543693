"""Fused Triton kernels for the gradient-free forward passes on CUDA GPUs.

Most of an HRM training step runs without gradient: all but the last L and H updates of a segment,
and the whole extra segment that gives the Q-learning target. In those passes `fused_swiglu`
computes the SwiGLU gate/up projection and silu(gate) * up in one kernel, so the
[tokens, 2 * inner] gate/up tensor is never written and read back (on an H100 at the Sudoku and
maze shapes, 1.12x the compiled PyTorch pair, with bit-identical bf16 outputs:
docs/performance.md). Passes with gradient keep the PyTorch path, whose backward autograd and
torch.compile provide.

The kernel is a torch custom op, so torch.compile treats it as a single call. `kernels_usable`
says whether it can run on a device: Triton imports and the kernel matches its PyTorch reference on
random inputs there; otherwise the layers fall back to PyTorch.
"""

import functools
import warnings

import torch

_FUSED_DTYPES = (torch.float16, torch.bfloat16)


def swiglu_supported(hidden_size: int, inner_size: int) -> bool:
    """Shapes the kernel handles (its launcher raises for others); other layers keep PyTorch."""
    return hidden_size % 16 == 0 and inner_size % 16 == 0


@torch.library.custom_op("hrm::swiglu", mutates_args=())
def fused_swiglu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """silu(x @ gate^T) * (x @ up^T) for x [tokens, hidden] and weight [2 * inner, hidden] = [gate; up]."""
    from models.kernels import swiglu as swiglu_kernel

    return swiglu_kernel.swiglu(x, weight)


@fused_swiglu.register_fake
def _swiglu_shape(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], weight.shape[0] // 2)


def _self_check(device: torch.device, dtype: torch.dtype) -> None:
    """Run the kernel once on random inputs and compare with its PyTorch reference."""
    from models.kernels import swiglu as swiglu_kernel

    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(300, 64, device=device, generator=generator).to(dtype)
    weight = (torch.randn(2 * 96, 64, device=device, generator=generator) / 8).to(dtype)
    reference = swiglu_kernel.swiglu_reference(x, weight).float()
    error = ((swiglu_kernel.swiglu(x, weight).float() - reference).norm() / reference.norm()).item()
    if not error < 2e-2:
        raise RuntimeError(f"fused SwiGLU differs from PyTorch by {error:.3g} (relative)")


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
