"""The SwiGLU MLP of the passes with gradient, with its activation and the activation's backward fused.

On the PyTorch path the MLP's forward writes the gate/up product, reads it back for silu(gate) * up,
and its backward writes the gradient of that activation's output, reads it back with the gate/up
product for the activation's backward, then multiplies. Here, with quack's epilogues:

    forward:   (gu, inner) = gate/up product with silu(g) * u in its epilogue (gu kept for backward)
               out = inner @ Wd^T
    backward:  (d_gu, inner) = (d_out @ Wd) with the activation's backward in its epilogue, which
               also recomputes inner for Wd's gradient
               d_Wd = d_out^T @ inner,  d_x = d_gu @ Wgu,  d_Wgu = d_gu^T @ x

so neither the activation nor its backward is a pass over memory of its own. The gate/up weight is
interleaved (gate_0, up_0, gate_1, ...) for the epilogue's column pairs; the interleaving is a
PyTorch op outside, so autograd maps the gradient back. The `*_reference` functions compute what
the kernels compute, in PyTorch; the kernels are used on a device only after they matched them.
"""

import functools
from typing import Callable, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

from models.kernels import FUSED_DTYPES, check_against_references, first_passing


def swiglu_with_product_reference(x: torch.Tensor, weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x @ weight^T rounded to x's dtype, silu(g) * u from the float32 product); weight interleaved."""
    product = x.float() @ weight.float().t()
    return product.to(x.dtype), (F.silu(product[:, 0::2]) * product[:, 1::2]).to(x.dtype)


def swiglu_backward_product_reference(grad_out: torch.Tensor, down_weight: torch.Tensor, gate_up: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(the gradient of the interleaved gate/up product, silu(g) * u) given the MLP output's gradient."""
    grad_inner = grad_out.float() @ down_weight.float()
    gate, up = gate_up[:, 0::2].float(), gate_up[:, 1::2].float()
    sigmoid = torch.sigmoid(gate)
    silu = gate * sigmoid
    grad_gate = grad_inner * up * sigmoid * (1 + gate * (1 - sigmoid))
    grad_gate_up = torch.stack((grad_gate, grad_inner * silu), dim=-1).flatten(1)
    return grad_gate_up.to(gate_up.dtype), (silu * up).to(gate_up.dtype)


class MLPKernels(NamedTuple):
    swiglu_with_product: Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]
    swiglu_backward_product: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


REFERENCE = MLPKernels(swiglu_with_product_reference, swiglu_backward_product_reference)


def _quack_kernels() -> MLPKernels:
    from quack.gemm_interface import gemm_act, gemm_dact

    def swiglu_with_product(x, weight):
        # quack takes B as [k, n]; weight.t() is a view.
        return gemm_act(x, weight.t(), activation="swiglu", store_preact=True)

    def swiglu_backward_product(grad_out, down_weight, gate_up):
        # down_weight [hidden, inner] is the [k, n] operand of grad_out @ down_weight.
        return gemm_dact(grad_out, down_weight, gate_up, activation="swiglu")

    return MLPKernels(swiglu_with_product, swiglu_backward_product)


MLP_KERNELS: dict[str, Callable[[], MLPKernels]] = {"quack": _quack_kernels}


def _self_check(build: Callable[[], MLPKernels], device: torch.device, dtype: torch.dtype) -> None:
    """Build a kernel set, run both kernels once on random inputs and compare them with their references."""
    kernels = build()
    generator = torch.Generator(device=device).manual_seed(0)

    def random(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, device=device, generator=generator) * scale).to(dtype)

    tokens, hidden, inner = 300, 128, 192
    x, grad_out = random(tokens, hidden), random(tokens, hidden)
    weight, down_weight = random(2 * inner, hidden, scale=hidden**-0.5), random(hidden, inner, scale=inner**-0.5)
    gate_up = random(tokens, 2 * inner)
    cases = {
        "swiglu_with_product": (kernels.swiglu_with_product, swiglu_with_product_reference, (x, weight)),
        "swiglu_backward_product": (kernels.swiglu_backward_product, swiglu_backward_product_reference, (grad_out, down_weight, gate_up)),
    }
    check_against_references(cases)


def choose_mlp_kernels(device: torch.device, dtype: torch.dtype, kernels: dict[str, Callable[[], MLPKernels]] = MLP_KERNELS) -> Optional[str]:
    """The first kernel set that imports, runs and matches the references on this device, or None."""
    checks = {name: functools.partial(_self_check, build, device, dtype) for name, build in kernels.items()}
    return first_passing(checks, "Fused MLP kernels", device)


@functools.cache
def mlp_kernel_name(device_type: str, device_index: int, dtype: torch.dtype) -> Optional[str]:
    """The fused MLP kernels used on this device and activation dtype; None where none is usable."""
    if device_type != "cuda" or dtype not in FUSED_DTYPES:
        return None
    return choose_mlp_kernels(torch.device(device_type, device_index), dtype)


# torch.compile runs this once while tracing and keeps the answer as a constant.
@torch.compiler.assume_constant_result
def mlp_kernels_usable(device_type: str, device_index: int, dtype: torch.dtype) -> bool:
    return mlp_kernel_name(device_type, device_index, dtype) is not None


def use_fused_mlp(x: torch.Tensor) -> bool:
    """True in passes with gradient on a device where the fused MLP kernels run correctly."""
    if not torch.is_grad_enabled() or x.device.type != "cuda":
        return False
    return mlp_kernels_usable(x.device.type, x.device.index or 0, x.dtype)


def _kernels_for(x: torch.Tensor) -> MLPKernels:
    # Off CUDA no kernel is chosen and the model never calls these ops; the CPU tests that call them
    # get the PyTorch reference.
    name = mlp_kernel_name(x.device.type, x.device.index or 0, x.dtype)
    return MLP_KERNELS[name]() if name else REFERENCE


@torch.library.custom_op("hrm::swiglu_with_product", mutates_args=())
def swiglu_with_product(x: torch.Tensor, weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    return _kernels_for(x).swiglu_with_product(x, weight)


@swiglu_with_product.register_fake
def _swiglu_with_product_shape(x, weight):
    return x.new_empty(x.shape[0], weight.shape[0]), x.new_empty(x.shape[0], weight.shape[0] // 2)


@torch.library.custom_op("hrm::swiglu_backward_product", mutates_args=())
def swiglu_backward_product(grad_out: torch.Tensor, down_weight: torch.Tensor, gate_up: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    return _kernels_for(grad_out).swiglu_backward_product(grad_out, down_weight, gate_up)


@swiglu_backward_product.register_fake
def _swiglu_backward_product_shape(grad_out, down_weight, gate_up):
    return torch.empty_like(gate_up), gate_up.new_empty(gate_up.shape[0], gate_up.shape[1] // 2)


class FusedSwiGLUMLP(torch.autograd.Function):
    """down(silu(g) * u) for x [tokens, hidden], the interleaved gate/up weight and the down weight."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, gate_up_weight: torch.Tensor, down_weight: torch.Tensor) -> torch.Tensor:
        gate_up, inner = swiglu_with_product(x, gate_up_weight)
        ctx.save_for_backward(x, gate_up_weight, down_weight, gate_up)
        return inner @ down_weight.t()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, gate_up_weight, down_weight, gate_up = ctx.saved_tensors
        grad_gate_up, inner = swiglu_backward_product(grad_out.contiguous(), down_weight, gate_up)
        return grad_gate_up @ gate_up_weight, grad_gate_up.t() @ x, grad_out.t() @ inner
