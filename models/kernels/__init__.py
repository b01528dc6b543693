"""Fused kernels for the gradient-free forward passes on CUDA GPUs.

Most of an HRM training step runs without gradient: all but the last L and H updates of a segment,
and the whole extra segment that gives the Q-learning target. In those passes `fused_swiglu`
computes the SwiGLU gate/up projection and silu(gate) * up in one kernel, so the
[tokens, 2 * inner] gate/up tensor is never written and read back. Passes with gradient keep the
PyTorch path, whose backward autograd and torch.compile provide.

Two kernels compute it, tried in this order (docs/performance.md has the timings):
- quack's `gemm_act` (the optional `quack-kernels` package, CuTe-DSL, Hopper and newer): a matrix
  product at cuBLAS speed or better with silu(gate) * up in its epilogue, 1.55x the compiled PyTorch
  pair on an H200. It applies the activation to the float32 accumulators before rounding once, so
  it differs from the PyTorch path by bf16 rounding (relative 3.5e-3), not bit for bit.
- our Triton kernel (`models/kernels/swiglu.py`): bit-identical to the PyTorch path, 1.12x on an
  H100 and no gain on an H200.

`fused_swiglu` is a torch custom op, so torch.compile treats it as a single call. A kernel is used
on a device only after it has run there once on random inputs and matched its PyTorch reference;
`swiglu_kernel_name` says which one passed (None: the layers keep PyTorch).
"""

import functools
import warnings
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

# Activation dtypes the fused kernels take; float32 keeps the PyTorch path.
FUSED_DTYPES = (torch.float16, torch.bfloat16)


def swiglu_supported(hidden_size: int, inner_size: int) -> bool:
    """Shapes both kernels handle (the Triton launcher raises for others); other layers keep PyTorch."""
    return hidden_size % 16 == 0 and inner_size % 16 == 0


def _quack_swiglu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    from quack.gemm_interface import gemm_act

    # concat_layout names the operand whose rows are [gate; up], the layout of gate_up_proj.weight;
    # store_preact=False: the gate/up product is never written.
    return gemm_act(x, weight.T, activation="swiglu", store_preact=False, concat_layout=("B",))[1]


def _triton_swiglu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    from models.kernels import swiglu as swiglu_kernel

    return swiglu_kernel.swiglu(x, weight)


# In order of preference.
SWIGLU_KERNELS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"quack": _quack_swiglu, "triton": _triton_swiglu}


def swiglu_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up in float32 from the gate/up product rounded to x's dtype, as the PyTorch path stores it."""
    gate, up = (x.float() @ weight.float().t()).to(x.dtype).float().chunk(2, dim=-1)
    return (F.silu(gate) * up).to(x.dtype)


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """|value - reference| / |reference| over all elements, in float32: how the kernel checks compare."""
    return ((value.float() - reference.float()).norm() / reference.float().norm()).item()


def check_against_references(cases: dict[str, Tuple[Callable, Callable, tuple]]) -> None:
    """Run each (kernel, reference, arguments) case and compare every output of the kernel with the
    reference's; raise, naming the case, where one differs by 2e-2 or more (relative)."""
    for name, (kernel, reference, args) in cases.items():
        outputs, expected = kernel(*args), reference(*args)
        if not isinstance(outputs, tuple):
            outputs, expected = (outputs,), (expected,)
        for out, want in zip(outputs, expected, strict=True):
            error = relative_error(out, want)
            if not error < 2e-2:
                raise RuntimeError(f"{name} differs from PyTorch by {error:.3g} (relative)")


def _self_check(kernel: Callable, device: torch.device, dtype: torch.dtype) -> None:
    """Run a kernel once on random inputs and compare it with the PyTorch reference."""
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(300, 64, device=device, generator=generator).to(dtype)
    weight = (torch.randn(2 * 96, 64, device=device, generator=generator) / 8).to(dtype)
    check_against_references({"swiglu": (kernel, swiglu_reference, (x, weight))})


def first_passing(checks: dict[str, Callable[[], None]], what: str, device: torch.device) -> Optional[str]:
    """The name of the first check that runs without raising, or None.

    A check that raises ImportError (its package is not installed) is skipped silently: the next one
    is the intended fallback. One that fails otherwise (a compiler or driver failure on this GPU, or
    wrong results) is skipped with a warning naming `what`.
    """
    for name, check in checks.items():
        try:
            check()
        except ImportError:
            continue
        except Exception as error:
            warnings.warn(f"{what} '{name}' skipped on {device} ({type(error).__name__}: {error}).")
            continue
        return name
    return None


def choose_swiglu_kernel(device: torch.device, dtype: torch.dtype, kernels: dict[str, Callable] = SWIGLU_KERNELS) -> Optional[str]:
    """The first kernel that imports, runs and matches the reference on this device, or None."""
    checks = {name: functools.partial(_self_check, kernel, device, dtype) for name, kernel in kernels.items()}
    return first_passing(checks, "Fused SwiGLU kernel", device)


@functools.cache
def swiglu_kernel_name(device_type: str, device_index: int, dtype: torch.dtype) -> Optional[str]:
    """The fused SwiGLU kernel used on this device and activation dtype; None where none is usable."""
    if device_type != "cuda" or dtype not in FUSED_DTYPES:
        return None
    return choose_swiglu_kernel(torch.device(device_type, device_index), dtype)


@torch.library.custom_op("hrm::swiglu", mutates_args=())
def fused_swiglu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """silu(x @ gate^T) * (x @ up^T) for x [tokens, hidden] and weight [2 * inner, hidden] = [gate; up]."""
    # Off CUDA no kernel is chosen and the layers never call this; the CPU tests that force the fused
    # path run the Triton kernel in Triton's interpreter.
    name = swiglu_kernel_name(x.device.type, x.device.index or 0, x.dtype) or "triton"
    return SWIGLU_KERNELS[name](x, weight)


@fused_swiglu.register_fake
def _swiglu_shape(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], weight.shape[0] // 2)


# torch.compile runs this once while tracing and keeps the answer as a constant.
@torch.compiler.assume_constant_result
def kernels_usable(device_type: str, device_index: int, dtype: torch.dtype) -> bool:
    """Whether a fused kernel runs correctly for this device and activation dtype."""
    return swiglu_kernel_name(device_type, device_index, dtype) is not None


def use_fused_kernels(hidden_states: torch.Tensor) -> bool:
    """True in gradient-free passes on a device where a fused kernel is usable."""
    if torch.is_grad_enabled() or hidden_states.device.type != "cuda":
        return False
    return kernels_usable(hidden_states.device.type, hidden_states.device.index or 0, hidden_states.dtype)
