"""quack's CuTe-DSL matrix products with the epilogues of block.py.

Importing this module raises ImportError where the optional `quack-kernels` package is not
installed. quack builds and tunes a kernel the first time it sees a shape; later calls replay it.
quack takes the second operand as [k, n], so the [n, k] weights go in as `weight.t()`, a view.
"""

import torch
from quack.epilogue.frontend import gemm_epilogue
from quack.epilogue.library import rstd_swiglu_epi
from quack.epilogue.ops import ColVecLoad, ColVecReduce
from quack.epilogue.rotary import rstd_rope_posfreq_epi


@gemm_epilogue(ops={"rstd": ColVecLoad("rstd")}, reduces={"sqsum": ColVecReduce("sqsum", scaled=True)})
def residual_sqsum_epi(acc, c, rstd):
    """The product plus the residual with its pending RMSNorm scale; sum of squares per row."""
    total = acc + c * rstd
    return {"D": total, "sqsum": (total, total)}


def rope_qkv(x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, positions: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
    return rstd_rope_posfreq_epi(x, weight.t(), pos=positions, freq=frequencies, rstd=rstd)["D"]


def residual_rms(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor, residual_rstd: torch.Tensor, eps: float):
    result = residual_sqsum_epi(x, weight.t(), residual, rstd=residual_rstd)
    # The reduce comes back summed over the column tiles: sum(y^2) per row, in float32.
    return result["D"], torch.rsqrt(result["sqsum"].view(-1) / weight.shape[0] + eps)


def rstd_swiglu(x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    inner = x.new_empty(x.shape[0], weight.shape[0] // 2)
    # store_d=False: the gate/up product itself is never written.
    rstd_swiglu_epi(x, weight.t(), out={"postact": inner}, store_d=False, rstd=rstd)
    return inner
