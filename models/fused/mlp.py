"""Kernel families "swiglu" and "mlp": the SwiGLU MLP with its activation in matrix-product epilogues.

On the PyTorch path the MLP's forward writes the gate/up product, reads it back for
silu(gate) * up, and its backward writes the gradient of that activation's output, reads it back
with the gate/up product for the activation's backward, then multiplies. Here:

- "swiglu", gradient-free passes: silu(gate) * up in the gate/up product's epilogue, so the
  [tokens, 2 * inner] product is never written;
- "mlp", passes with gradient, forward and backward:

    forward:   (gu, inner) = gate/up product with silu(g) * u in its epilogue (gu kept for backward)
               out = inner @ Wd^T
    backward:  (d_gu, inner) = (d_out @ Wd) with the activation's backward in its epilogue, which
               also recomputes inner for Wd's gradient
               d_Wd = d_out^T @ inner,  d_x = d_gu @ Wgu,  d_Wgu = d_gu^T @ x

  so neither the activation nor its backward is a pass over memory of its own. The gate/up weight
  is interleaved (gate_0, up_0, gate_1, ...) for the epilogue's column pairs; the interleaving is a
  PyTorch op outside, so autograd maps the gradient back.

The `*_reference` functions compute what the kernels compute, in PyTorch; a kernel is used on a
device only after it matched them there.
"""

from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from models.fused.block import interleave_gate_up_weight
from models.kernel_choice import check_against_references
from models.layers import SwiGLU


def supported(mlp: SwiGLU, hidden_size: Optional[int] = None) -> bool:
    """Shapes the kernels take: 16-element-aligned rows of the inner size and of `hidden_size` (the
    MLP's own unless it runs over a padded axis); other layers keep PyTorch."""
    inner_size = mlp.down_proj.weight.shape[1]
    hidden_size = mlp.down_proj.weight.shape[0] if hidden_size is None else hidden_size
    return hidden_size % 16 == 0 and inner_size % 16 == 0


def _random(device: torch.device, dtype: torch.dtype) -> Callable[..., torch.Tensor]:
    generator = torch.Generator(device=device).manual_seed(0)
    return lambda *shape, scale=1.0: (torch.randn(*shape, device=device, generator=generator) * scale).to(dtype)


# "swiglu": gradient-free passes ---------------------------------------------------------------------


def swiglu_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up in float32 from the gate/up product rounded to x's dtype, as the PyTorch path stores it."""
    gate, up = (x.float() @ weight.float().t()).to(x.dtype).float().chunk(2, dim=-1)
    return (F.silu(gate) * up).to(x.dtype)


def _quack_swiglu() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    from quack.gemm_interface import gemm_act

    def swiglu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # quack takes B as [k, n]: weight.t() is a view. concat_layout names the operand whose rows
        # are [gate; up], the layout of gate_up_proj.weight; store_preact=False: the gate/up product
        # is never written.
        return gemm_act(x, weight.t(), activation="swiglu", store_preact=False, concat_layout=("B",))[1]

    return swiglu


# Kernel name -> its kernel, in order of preference (ImportError: the package is missing).
SWIGLU_KERNELS: Dict[str, Callable[[], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = {"quack": _quack_swiglu}


def check_swiglu_kernel(build: Callable, device: torch.device, dtype: torch.dtype) -> None:
    """Build a kernel, run it once on random inputs and compare it with the PyTorch reference."""
    random = _random(device, dtype)
    check_against_references({"swiglu": (build(), swiglu_reference, (random(300, 64), random(2 * 96, 64, scale=1 / 8)))})


@torch.library.custom_op("hrm::swiglu", mutates_args=())
def gate_up_swiglu(x: torch.Tensor, weight: torch.Tensor, kernels: str) -> torch.Tensor:
    """silu(x @ gate^T) * (x @ up^T) for x [tokens, hidden] and weight [2 * inner, hidden] = [gate; up]."""
    return SWIGLU_KERNELS[kernels]()(x, weight)


@gate_up_swiglu.register_fake
def _gate_up_swiglu_shape(x, weight, kernels):
    return x.new_empty(x.shape[0], weight.shape[0] // 2)


# "mlp": passes with gradient ------------------------------------------------------------------------


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


def _quack_mlp() -> MLPKernels:
    from quack.gemm_interface import gemm_act, gemm_dact

    def swiglu_with_product(x, weight):
        # quack takes B as [k, n]; weight.t() is a view.
        return gemm_act(x, weight.t(), activation="swiglu", store_preact=True)

    def swiglu_backward_product(grad_out, down_weight, gate_up):
        # down_weight [hidden, inner] is the [k, n] operand of grad_out @ down_weight.
        return gemm_dact(grad_out, down_weight, gate_up, activation="swiglu")

    return MLPKernels(swiglu_with_product, swiglu_backward_product)


# Kernel name -> its kernel set, in order of preference (ImportError: the package is missing).
MLP_KERNELS: Dict[str, Callable[[], MLPKernels]] = {"quack": _quack_mlp}


def check_mlp_kernels(build: Callable[[], MLPKernels], device: torch.device, dtype: torch.dtype) -> None:
    """Build a kernel set, run both kernels once on random inputs and compare them with their references."""
    kernels, random = build(), _random(device, dtype)
    tokens, hidden, inner = 300, 128, 192
    x, grad_out = random(tokens, hidden), random(tokens, hidden)
    weight, down_weight = random(2 * inner, hidden, scale=hidden**-0.5), random(hidden, inner, scale=inner**-0.5)
    gate_up = random(tokens, 2 * inner)
    check_against_references({
        "swiglu_with_product": (kernels.swiglu_with_product, swiglu_with_product_reference, (x, weight)),
        "swiglu_backward_product": (kernels.swiglu_backward_product, swiglu_backward_product_reference, (grad_out, down_weight, gate_up)),
    })


@torch.library.custom_op("hrm::swiglu_with_product", mutates_args=())
def swiglu_with_product(x: torch.Tensor, weight: torch.Tensor, kernels: str) -> Tuple[torch.Tensor, torch.Tensor]:
    return MLP_KERNELS[kernels]().swiglu_with_product(x, weight)


@swiglu_with_product.register_fake
def _swiglu_with_product_shape(x, weight, kernels):
    return x.new_empty(x.shape[0], weight.shape[0]), x.new_empty(x.shape[0], weight.shape[0] // 2)


@torch.library.custom_op("hrm::swiglu_backward_product", mutates_args=())
def swiglu_backward_product(grad_out: torch.Tensor, down_weight: torch.Tensor, gate_up: torch.Tensor, kernels: str) -> Tuple[torch.Tensor, torch.Tensor]:
    return MLP_KERNELS[kernels]().swiglu_backward_product(grad_out, down_weight, gate_up)


@swiglu_backward_product.register_fake
def _swiglu_backward_product_shape(grad_out, down_weight, gate_up, kernels):
    return torch.empty_like(gate_up), gate_up.new_empty(gate_up.shape[0], gate_up.shape[1] // 2)


class FusedSwiGLUMLP(torch.autograd.Function):
    """down(silu(g) * u) for x [tokens, hidden], the interleaved gate/up weight and the down weight."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, gate_up_weight: torch.Tensor, down_weight: torch.Tensor, kernels: str) -> torch.Tensor:
        gate_up, inner = swiglu_with_product(x, gate_up_weight, kernels)
        ctx.save_for_backward(x, gate_up_weight, down_weight, gate_up)
        ctx.kernels = kernels
        return inner @ down_weight.t()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, gate_up_weight, down_weight, gate_up = ctx.saved_tensors
        grad_gate_up, inner = swiglu_backward_product(grad_out.contiguous(), down_weight, gate_up, ctx.kernels)
        return grad_gate_up @ gate_up_weight, grad_gate_up.t() @ x, grad_out.t() @ inner, None


# The module -----------------------------------------------------------------------------------------


class FusedSwiGLU(SwiGLU):
    """A SwiGLU whose gradient-free passes run the "swiglu" kernel `gradient_free` and whose passes
    with gradient run the "mlp" kernels `with_gradient` (None: that pass keeps PyTorch). It holds the
    replaced SwiGLU's projections, so its parameters and state-dict keys are the same."""

    def __init__(self, mlp: SwiGLU, gradient_free: Optional[str], with_gradient: Optional[str]):
        nn.Module.__init__(self)  # SwiGLU.__init__ would create (and randomly initialise) new weights
        self.gate_up_proj, self.down_proj = mlp.gate_up_proj, mlp.down_proj
        self.gradient_free, self.with_gradient = gradient_free, with_gradient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.swiglu(x, self.gate_up_proj.weight.to(x.dtype), self.down_proj.weight.to(x.dtype))

    def swiglu(self, x: torch.Tensor, gate_up_weight: torch.Tensor, down_weight: torch.Tensor) -> torch.Tensor:
        """down(silu(gate) * up) over x's last axis, with the weights given in x's dtype."""
        kernels = self.with_gradient if torch.is_grad_enabled() else self.gradient_free
        if kernels is None:
            gate, up = F.linear(x, gate_up_weight).chunk(2, dim=-1)
            return F.linear(F.silu(gate) * up, down_weight)
        rows = x.reshape(-1, x.shape[-1])
        if torch.is_grad_enabled():
            out = FusedSwiGLUMLP.apply(rows, interleave_gate_up_weight(gate_up_weight), down_weight, kernels)
        else:
            out = F.linear(gate_up_swiglu(rows, gate_up_weight, kernels), down_weight)
        return out.view(*x.shape[:-1], out.shape[-1])
