"""Time the fused Triton kernel of models/kernels against the compiled PyTorch code it replaces, for
the layer shapes of the Sudoku and maze training steps, on a CUDA GPU.

    python benchmarks/kernels.py [--output FILE]

Prints one JSON line per shape and kernel: median microseconds of the fused kernel and of the PyTorch
path compiled with torch.compile (as training runs it), their ratio, and the fused kernel's relative
error against the PyTorch path in bfloat16.

Where the `quack-kernels` package imports (CuTe-DSL matrix products with fused epilogues, Hopper and
newer), the same layer operations are also timed through it: its plain matrix product against
cuBLAS, the gate/up product with silu(gate) * up in its epilogue, and the down projection with the
residual added in its epilogue (then the compiled RMSNorm).
"""

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.kernels.swiglu import swiglu  # noqa: E402
from models.layers import rms_norm  # noqa: E402

# (batch, sequence incl. the puzzle position) of each training shape; default architecture sizes.
SHAPES = {"sudoku": (768, 82), "maze": (96, 901)}
HIDDEN, INNER = 512, 1536


def swiglu_pytorch(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    gate, up = F.linear(x, weight).chunk(2, dim=-1)
    return F.silu(gate) * up


def down_residual_norm_pytorch(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    return rms_norm(residual + F.linear(x, weight), 1e-5)


def quack_layer_ops() -> dict:
    """The quack versions of the layer operations, by name; empty where the package does not import."""
    try:
        from quack.gemm_interface import gemm, gemm_act, gemm_add
    except Exception:  # missing, or built for another CUDA/PyTorch: time the rest
        return {}
    compiled_norm = torch.compile(rms_norm, dynamic=False)
    return {
        "gate_up-matmul-quack": (lambda x, weight: gemm(x, weight.T), lambda x, weight: F.linear(x, weight)),
        "swiglu-quack": (lambda x, weight: gemm_act(x, weight.T, activation="swiglu", store_preact=False, concat_layout=("B",))[1],
                         swiglu_pytorch),
        "down-residual-rmsnorm-quack": (lambda x, weight, residual: compiled_norm(gemm_add(x, weight.T, residual), 1e-5),
                                        down_residual_norm_pytorch),
    }


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.float() - reference.float()).norm() / reference.float().norm()).item()


def compare(shape: str, kernel: str, fused, pytorch, inputs) -> dict:
    compiled = torch.compile(pytorch, dynamic=False)
    with torch.no_grad():
        error = relative_error(fused(*inputs), compiled(*inputs))
        fused_us = do_bench(lambda: fused(*inputs), warmup=50, rep=300, return_mode="median") * 1e3
        pytorch_us = do_bench(lambda: compiled(*inputs), warmup=50, rep=300, return_mode="median") * 1e3
    return {"shape": shape, "kernel": kernel, "fused_us": round(fused_us, 1), "pytorch_compiled_us": round(pytorch_us, 1),
            "speedup": round(pytorch_us / fused_us, 3), "relative_error": round(error, 5),
            "device": torch.cuda.get_device_name(), "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", help="also append the JSON lines to this file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/kernels.py needs a CUDA GPU")

    generator = torch.Generator(device="cuda").manual_seed(0)
    records = []
    for shape, (batch, seq) in SHAPES.items():
        x = torch.randn(batch * seq, HIDDEN, device="cuda", generator=generator, dtype=torch.bfloat16)
        weight = (torch.randn(2 * INNER, HIDDEN, device="cuda", generator=generator) / HIDDEN**0.5).to(torch.bfloat16)
        records.append(compare(shape, "swiglu", swiglu, swiglu_pytorch, (x, weight)))
        inner = torch.randn(batch * seq, INNER, device="cuda", generator=generator, dtype=torch.bfloat16)
        down_weight = (torch.randn(HIDDEN, INNER, device="cuda", generator=generator) / INNER**0.5).to(torch.bfloat16)
        inputs = {"gate_up-matmul-quack": (x, weight), "swiglu-quack": (x, weight),
                  "down-residual-rmsnorm-quack": (inner, down_weight, x)}
        for kernel, (fused, pytorch) in quack_layer_ops().items():
            try:
                records.append(compare(shape, kernel, fused, pytorch, inputs[kernel]))
            except Exception as error:  # a configuration quack does not support: report it, time the rest
                records.append({"shape": shape, "kernel": kernel, "error": f"{type(error).__name__}: {error}"[:500]})

    for record in records:
        line = json.dumps(record)
        print(line)
        if args.output:
            with open(args.output, "a") as file:
                file.write(line + "\n")


if __name__ == "__main__":
    main()
