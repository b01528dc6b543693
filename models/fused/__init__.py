"""Opt-in fused GPU kernels for HRM (arch.fused_kernels=true), applied to a built model from outside.

    description = apply_fused_kernels(model, device)  # e.g. "quack block, quack MLP with gradient", or "off"

Most of an HRM training step runs without gradient: all but the last L and H updates of each
segment, and the whole extra segment that gives the Q-learning target. The kernels here run those
passes, and the MLP of the passes with gradient, with fewer trips through GPU memory, as matrix
products with the surrounding elementwise work in their epilogues. Three families:

- "block" (block.py): in gradient-free passes, each reasoning module runs its blocks as four fused
  products each, with the RMSNorms deferred;
- "swiglu" (mlp.py): in gradient-free passes, only the SwiGLU's gate/up product with
  silu(gate) * up in its epilogue; used where the block family is not;
- "mlp" (mlp.py): in passes with gradient, the SwiGLU MLP with its activation and the
  activation's backward in epilogues.

Each family is swapped in as modules that hold the replaced modules' own parameters, so state
dicts, checkpoints and optimisers see no difference, and only where its kernels have run on the
device and matched their PyTorch references (models/kernel_choice.py); elsewhere the model keeps
its PyTorch path. The kernels are quack's (the optional `quack-kernels` package: CuTe-DSL, Hopper
and newer). They compute in float32 and round once where PyTorch rounds after each step, so
results differ from the PyTorch path by bfloat16 rounding.
"""

import functools
from typing import Optional, Sequence

import torch
from torch import nn

from models.fused import block, mlp
from models.kernel_choice import choose_kernel

FAMILIES = ("block", "swiglu", "mlp")
# The devices and activation dtypes the kernels are written for; elsewhere none is tried.
KERNEL_DEVICE_TYPES = ("cuda",)
KERNEL_DTYPES = (torch.float16, torch.bfloat16)


def apply_fused_kernels(model: nn.Module, device: torch.device, families: Sequence[str] = FAMILIES) -> str:
    """Swap the fused modules of `families` into `model` (a HierarchicalReasoningModel_ACTV1 on
    `device`) where their kernels pass their check there; return `fused_kernels_in_use(model)`."""
    unknown = [family for family in families if family not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown fused kernel families {unknown}; choose from {', '.join(FAMILIES)}")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    inner = model.inner
    config, dtype = inner.config, inner.forward_dtype
    num_heads, head_dim = config.num_heads, config.hidden_size // config.num_heads

    block_kernels = None
    if "block" in families and block.supported(config.hidden_size, head_dim):
        block_kernels = _choose_kernels("block", device, dtype)
    if block_kernels is not None:
        inv_freq = block.rope_inv_freq(head_dim, config.rope_theta) if config.pos_encodings == "rope" else None
        tables = block.rope_tables(inv_freq, config.batch_size, config.seq_len + inner.puzzle_emb_len, num_heads, head_dim, device)
        inner.H_level = block.FusedReasoningModule(inner.H_level, block_kernels, tables)
        inner.L_level = block.FusedReasoningModule(inner.L_level, block_kernels, tables)

    swiglu_kernel = _choose_kernels("swiglu", device, dtype) if "swiglu" in families and block_kernels is None else None
    mlp_kernels = _choose_kernels("mlp", device, dtype) if "mlp" in families else None
    if swiglu_kernel is not None or mlp_kernels is not None:
        for layer in [*inner.H_level.layers, *inner.L_level.layers]:
            if mlp.supported(layer.mlp):
                layer.mlp = mlp.FusedSwiGLU(layer.mlp, swiglu_kernel, mlp_kernels)
    return fused_kernels_in_use(model)


def fused_kernels_in_use(model: nn.Module) -> str:
    """What `apply_fused_kernels` swapped into `model`, e.g. "quack block, quack MLP with gradient";
    "off" where nothing."""
    parts = []
    for module in model.modules():
        if isinstance(module, block.FusedReasoningModule):
            parts.append(f"{module.kernels} block")
        elif isinstance(module, mlp.FusedSwiGLU):
            if module.gradient_free is not None:
                parts.append(f"{module.gradient_free} SwiGLU")
            if module.with_gradient is not None:
                parts.append(f"{module.with_gradient} MLP with gradient")
    return ", ".join(dict.fromkeys(parts)) or "off"


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
