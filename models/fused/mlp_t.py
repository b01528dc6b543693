"""TRM's mlp_t, the SwiGLU across positions, in two other layouts of the same computation.

The model (models/recursive_reasoning/trm.py) views a block's state [batch, positions, hidden] as
[batch, hidden, positions], runs the SwiGLU over the last axis, adds the residual, RMS-normalises
over positions and views the result back. Its products contract over positions, seq_len + P (97
for Sudoku), and read or write rows of that length: not 16-byte aligned in bfloat16, which
cuBLAS's fastest kernels and quack's want; where a product needs the batch folded into its rows
(the weight gradients), the transposed state is copied. Two levers, each the same arithmetic up to
the order in which the products accumulate:

- "mlp_t_padded" (`PaddedSwiGLU`): the position axis zero-padded to a multiple of 16, in the
  activations and in the weights (zero gate/up columns, zero down rows), so that every product is
  aligned; padded positions add exact zeros and are cut off the output. Padded (to a multiple of 64
  for them), the SwiGLU can run the "swiglu" and "mlp" kernels of mlp.py, which apply_fused_kernels
  then gives it.
- "mlp_t_left" (`LeftMultipliedBlock`): the weights multiply the state from the left, per
  sequence: gate/up = W_gu [2 * inner, positions] @ x [positions, hidden], out = W_d @ (silu(gate)
  * up), the RMSNorm over axis 1. The state keeps its layout: the products' activations are rows
  of the hidden size (only the small weights have rows of the position count). In gradient-free
  passes PyTorch runs each product as one batched product with the weight broadcast over the batch.
  Where the weight needs a gradient, PyTorch folds the batch into the product's rows instead (one
  transposed copy of the state), so that the weight's gradient is one product rather than a batch
  of products summed.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from models.fused.mlp import FusedSwiGLU
from models.layers import CosSin, SwiGLU, rms_norm
from models.recursive_reasoning.trm import TinyRecursiveReasoningModel_ACTV1Block

# Rows of 16 bfloat16 values (32 bytes) are aligned for cuBLAS's vector loads. The kernels of mlp.py
# read the contraction 64 columns at a time and were checked at such widths (mlp.check_*), so with
# them the axis is padded to a multiple of 64.
POSITION_MULTIPLE = 16
KERNEL_POSITION_MULTIPLE = 64


def padded_positions(positions: int, multiple: int = POSITION_MULTIPLE) -> int:
    return -(positions // -multiple) * multiple


class PaddedSwiGLU(FusedSwiGLU):
    """mlp_t over its position axis zero-padded to `padded_size`; the "swiglu" kernel `gradient_free`
    and the "mlp" kernels `with_gradient` as in FusedSwiGLU (None: PyTorch). It holds the replaced
    SwiGLU's projections, so its parameters and state-dict keys are the same."""

    def __init__(self, mlp: SwiGLU, padded_size: int, gradient_free: Optional[str], with_gradient: Optional[str]):
        super().__init__(mlp, gradient_free, with_gradient)
        self.padded_size = padded_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = x.shape[-1]
        padding = self.padded_size - positions
        gate_up_weight = F.pad(self.gate_up_proj.weight.to(x.dtype), (0, padding))
        down_weight = F.pad(self.down_proj.weight.to(x.dtype), (0, 0, 0, padding))
        return self.swiglu(F.pad(x, (0, padding)), gate_up_weight, down_weight)[..., :positions]


class LeftMultipliedBlock(TinyRecursiveReasoningModel_ACTV1Block):
    """A TRM block with mlp_t whose SwiGLU across positions applies its weights from the left, on
    the untransposed state. It holds the replaced block's modules, so its parameters and state-dict
    keys are the same."""

    def __init__(self, block: TinyRecursiveReasoningModel_ACTV1Block):
        nn.Module.__init__(self)  # the block's __init__ would create (and randomly initialise) new weights
        self.mixes_with_mlp = True
        self.mlp_t, self.mlp, self.norm_eps = block.mlp_t, block.mlp, block.norm_eps

    def forward(self, cos_sin: Optional[CosSin], hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        # [2 * inner, positions] @ [batch, positions, hidden] -> [batch, 2 * inner, hidden]
        gate, up = torch.matmul(self.mlp_t.gate_up_proj.weight.to(dtype), hidden_states).chunk(2, dim=1)
        mixed = torch.matmul(self.mlp_t.down_proj.weight.to(dtype), F.silu(gate) * up)
        hidden_states = rms_norm(hidden_states + mixed, self.norm_eps, dim=1)
        return rms_norm(hidden_states + self.mlp(hidden_states), self.norm_eps)
