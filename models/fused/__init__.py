"""Opt-in fused GPU kernels for HRM and TRM (arch.fused_kernels=true), applied to a built model from outside.

    description = apply_fused_kernels(model, device)  # e.g. "quack block, quack MLP with gradient", or "off"

Most of a training step runs without gradient: all but the last updates of each segment (HRM: the
last L and H update; TRM: the last recursion), and HRM's whole extra segment that gives the
Q-learning target. The kernels here run those passes, and the MLP of the passes with gradient,
with fewer trips through GPU memory, as matrix products with the surrounding elementwise work in
their epilogues. Three families:

- "block" (block.py): in gradient-free passes, each reasoning module of attention blocks runs its
  blocks as four fused products each, with the RMSNorms deferred;
- "swiglu" (mlp.py): in gradient-free passes, only the SwiGLU's gate/up product with
  silu(gate) * up in its epilogue; used where the block family is not;
- "mlp" (mlp.py): in passes with gradient, the SwiGLU MLP with its activation and the
  activation's backward in epilogues.

The two SwiGLU families also run TRM's mlp_t (the SwiGLU across positions), over its position axis
zero-padded to an aligned length (mlp_t.py). Two further levers, not among FAMILIES (what
arch.fused_kernels=true applies), change only the layout of mlp_t and run on any device:
"mlp_t_padded" (the padding alone, with PyTorch's products) and "mlp_t_left" (the weights applied
from the left, without transposes; mlp_t then keeps PyTorch's products).

Each family is swapped in as modules that hold the replaced modules' own parameters, so state
dicts, checkpoints and optimisers see no difference, and a kernel family only where its kernels
have run on the device and matched their PyTorch references (models/kernel_choice.py); elsewhere
the model keeps its PyTorch path. The kernels are quack's (the optional `quack-kernels` package:
CuTe-DSL, Hopper and newer). They compute in float32 and round once where PyTorch rounds after each
step, so results differ from the PyTorch path by bfloat16 rounding.
"""

import functools
from typing import Optional, Sequence

import torch
from torch import nn

from models.fused import block, mlp, mlp_t
from models.hrm.hrm_act_v1 import HierarchicalReasoningModel_ACTV1ReasoningModule
from models.kernel_choice import choose_kernel

FAMILIES = ("block", "swiglu", "mlp")
MLP_T_LAYOUTS = ("mlp_t_padded", "mlp_t_left")
# The devices and activation dtypes the kernels are written for; elsewhere none is tried.
KERNEL_DEVICE_TYPES = ("cuda",)
KERNEL_DTYPES = (torch.float16, torch.bfloat16)


def apply_fused_kernels(model: nn.Module, device: torch.device, families: Sequence[str] = FAMILIES) -> str:
    """Swap the fused modules of `families` (of FAMILIES and MLP_T_LAYOUTS) into `model` (HRM's or
    TRM's ACT model on `device`), each kernel family where its kernels pass their check there;
    return `fused_kernels_in_use(model)`."""
    unknown = [family for family in families if family not in FAMILIES + MLP_T_LAYOUTS]
    if unknown:
        raise ValueError(f"unknown fused kernel families {unknown}; choose from {', '.join(FAMILIES + MLP_T_LAYOUTS)}")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    inner = model.inner
    config, dtype = inner.config, inner.forward_dtype
    num_heads, head_dim = config.num_heads, config.hidden_size // config.num_heads
    # HRM's H_level and L_level; TRM's L_level.
    levels = {name: module for name, module in inner.named_children() if isinstance(module, HierarchicalReasoningModel_ACTV1ReasoningModule)}

    attending = [name for name, level in levels.items() if block.fusable(level)]
    block_kernels = None
    if "block" in families and attending and block.supported(config.hidden_size, head_dim):
        block_kernels = _choose_kernels("block", device, dtype)
    if block_kernels is not None:
        inv_freq = block.rope_inv_freq(head_dim, config.rope_theta) if config.pos_encodings == "rope" else None
        tables = block.rope_tables(inv_freq, config.batch_size, config.seq_len + inner.puzzle_emb_len, num_heads, head_dim, device)
        for name in attending:
            setattr(inner, name, block.FusedReasoningModule(levels[name], block_kernels, tables))

    # The SwiGLU of the gradient-free passes, where no fused block runs them.
    block_fused = set(attending) if block_kernels is not None else set()
    needs_swiglu = any(name not in block_fused for name in levels)
    swiglu_kernel = _choose_kernels("swiglu", device, dtype) if "swiglu" in families and needs_swiglu else None
    mlp_kernels = _choose_kernels("mlp", device, dtype) if "mlp" in families else None

    for name in levels:
        gradient_free = None if name in block_fused else swiglu_kernel
        layers = getattr(inner, name).layers
        for index, layer in enumerate(layers):
            if hasattr(layer, "mlp_t"):
                layer = layers[index] = _mlp_t_layout(layer, families, gradient_free, mlp_kernels)
            if (gradient_free is not None or mlp_kernels is not None) and mlp.supported(layer.mlp):
                layer.mlp = mlp.FusedSwiGLU(layer.mlp, gradient_free, mlp_kernels)
    return fused_kernels_in_use(model)


def fused_kernels_in_use(model: nn.Module) -> str:
    """What `apply_fused_kernels` swapped into `model`, e.g. "quack block, quack MLP with gradient";
    "off" where nothing."""
    parts = []
    for module in model.modules():
        if isinstance(module, block.FusedReasoningModule):
            parts.append(f"{module.kernels} block")
        elif isinstance(module, mlp_t.LeftMultipliedBlock):
            parts.append("mlp_t weights from the left")
        elif isinstance(module, mlp_t.PaddedSwiGLU):
            parts.append(f"mlp_t padded to {module.padded_size} positions")
            if module.gradient_free is not None:
                parts.append(f"{module.gradient_free} mlp_t SwiGLU")
            if module.with_gradient is not None:
                parts.append(f"{module.with_gradient} mlp_t with gradient")
        elif isinstance(module, mlp.FusedSwiGLU):
            if module.gradient_free is not None:
                parts.append(f"{module.gradient_free} SwiGLU")
            if module.with_gradient is not None:
                parts.append(f"{module.with_gradient} MLP with gradient")
    return ", ".join(dict.fromkeys(parts)) or "off"


def _mlp_t_layout(layer: nn.Module, families: Sequence[str], gradient_free: Optional[str], with_gradient: Optional[str]) -> nn.Module:
    """A TRM block with mlp_t: as it is; with its mlp_t padded for the kernels given (which need the
    padding), else for PyTorch's products where "mlp_t_padded" asks; or replaced by the block that
    multiplies from the left."""
    if "mlp_t_left" in families:
        return mlp_t.LeftMultipliedBlock(layer)
    positions = layer.mlp_t.down_proj.weight.shape[0]
    kernel_width = mlp_t.padded_positions(positions, mlp_t.KERNEL_POSITION_MULTIPLE)
    if (gradient_free is not None or with_gradient is not None) and mlp.supported(layer.mlp_t, hidden_size=kernel_width):
        layer.mlp_t = mlp_t.PaddedSwiGLU(layer.mlp_t, kernel_width, gradient_free, with_gradient)
    elif "mlp_t_padded" in families:
        layer.mlp_t = mlp_t.PaddedSwiGLU(layer.mlp_t, mlp_t.padded_positions(positions), None, None)
    return layer


def _choose_kernels(family: str, device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """The first of the family's kernels that passes its check on this device and dtype, or None."""
    if device.type not in KERNEL_DEVICE_TYPES or dtype not in KERNEL_DTYPES:
        return None
    candidates, check = {
        "block": (block.BLOCK_KERNELS, block.check_kernels),
        "swiglu": (mlp.SWIGLU_KERNELS, mlp.check_swiglu_kernel),
        "mlp": (mlp.MLP_KERNELS, mlp.check_mlp_kernels),
    }[family]
    checks = {name: functools.partial(check, build, device, dtype) for name, build in candidates.items()}
    return choose_kernel(f"Fused {family} kernels", device, dtype, lambda: checks)
