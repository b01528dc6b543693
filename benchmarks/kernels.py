"""Time the layer kernels of the Sudoku and maze training steps at their shapes, on a CUDA GPU.

    python benchmarks/kernels.py [--output FILE]

Prints one JSON line per shape and kernel:
- quack (where the `quack-kernels` package imports: CuTe-DSL matrix products with fused epilogues,
  Hopper and newer) against the compiled PyTorch code it replaces (torch.compile, as training runs
  it): median microseconds of both, their ratio, and the kernel's relative error against the
  PyTorch path in bfloat16, for its plain matrix product against cuBLAS, the gate/up product with
  silu(gate) * up in its epilogue (the "swiglu" family of models/fused), and the down projection
  with the residual added in its epilogue (then the compiled RMSNorm);
- the "block" family of models/fused (quack): each of its four products with its epilogue against
  the compiled PyTorch code it replaces (qkv + RoPE, o_proj + residual + RMSNorm, gate/up + SwiGLU,
  down + residual + RMSNorm); timings only, as the outputs' layouts differ
  (tests/test_fused_block.py checks the values);
- attention: every kernel that runs here (PyTorch SDPA's cuDNN, flash and memory-efficient kernels,
  FlashAttention 2, 3 and 4 where installed): median microseconds of the forward alone (as the
  step's gradient-free layer passes run it) and of forward + backward (as its passes with gradient
  do), and the relative error of the output and of the query gradient against float32 attention.
A kernel that fails at a shape gets a line with its error instead.
"""

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models import attention as attention_module  # noqa: E402
from models.fused import block, mlp  # noqa: E402
from models.kernel_choice import relative_error  # noqa: E402
from models.layers import RotaryEmbedding, apply_rotary_pos_emb, rms_norm  # noqa: E402

# (batch, sequence incl. the puzzle position) of each training shape; default architecture sizes.
SHAPES = {"sudoku": (768, 82), "maze": (96, 901)}
HIDDEN, INNER = 512, 1536
NUM_HEADS, HEAD_DIM = 8, 64


def swiglu_pytorch(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    gate, up = F.linear(x, weight).chunk(2, dim=-1)
    return F.silu(gate) * up


def down_residual_norm_pytorch(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    return rms_norm(residual + F.linear(x, weight), 1e-5)


def qkv_rope_pytorch(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    qkv = F.linear(x, weight).view(-1, cos.shape[0], 3 * NUM_HEADS, HEAD_DIM)  # cos: [seq, head_dim]
    query, key = apply_rotary_pos_emb(qkv[:, :, :NUM_HEADS], qkv[:, :, NUM_HEADS : 2 * NUM_HEADS], cos, sin)
    return query, key, qkv[:, :, 2 * NUM_HEADS :]


def block_records(generator: torch.Generator) -> list:
    """The fused block's four products against the compiled PyTorch code they replace, per shape."""
    try:
        kernels = block.BLOCK_KERNELS["quack"]()
    except ImportError:
        return []
    def random(*size, scale=1.0):
        return (torch.randn(*size, device="cuda", generator=generator) * scale).to(torch.bfloat16)

    records = []
    for shape, (batch, seq) in SHAPES.items():
        x, residual, inner = random(batch * seq, HIDDEN), random(batch * seq, HIDDEN), random(batch * seq, INNER)
        rstd = torch.rand(batch * seq, device="cuda", generator=generator) + 0.5
        qkv_weight, o_weight = random(3 * HIDDEN, HIDDEN, scale=HIDDEN**-0.5), random(HIDDEN, HIDDEN, scale=HIDDEN**-0.5)
        gate_up_weight, down_weight = random(2 * INNER, HIDDEN, scale=HIDDEN**-0.5), random(HIDDEN, INNER, scale=INNER**-0.5)
        rotary = RotaryEmbedding(dim=HEAD_DIM, max_position_embeddings=seq, base=10000.0).cuda()
        tables = block.rope_tables(block.rope_inv_freq(HEAD_DIM, 10000.0), batch, seq, NUM_HEADS, HEAD_DIM, torch.device("cuda"))
        # kernel: (fused kernel, its inputs, the PyTorch code it replaces, that code's inputs)
        cases = {
            "qkv-rope-block": (kernels.rope_qkv, (x, qkv_weight, rstd, *tables), qkv_rope_pytorch, (x, qkv_weight, *rotary())),
            "o-residual-rmsnorm-block": (kernels.residual_rms, (x, o_weight, residual, rstd, 1e-5), down_residual_norm_pytorch,
                                         (x, o_weight, residual)),
            "swiglu-rstd-block": (kernels.rstd_swiglu, (x, gate_up_weight, rstd), swiglu_pytorch, (x, gate_up_weight)),
            "down-residual-rmsnorm-block": (kernels.residual_rms, (inner, down_weight, residual, rstd, 1e-5), down_residual_norm_pytorch,
                                            (inner, down_weight, residual)),
        }
        for kernel, (fused, fused_inputs, pytorch, inputs) in cases.items():
            try:
                records.append(compare(shape, kernel, fused, pytorch, inputs, fused_inputs=fused_inputs))
            except Exception as error:  # a configuration quack does not support: report it, time the rest
                records.append({"shape": shape, "kernel": kernel, "error": f"{type(error).__name__}: {error}"[:500]})
    return records


def quack_layer_ops() -> dict:
    """The quack versions of the layer operations, by name; empty where the package does not import."""
    try:
        from quack.gemm_interface import gemm, gemm_add
        swiglu = mlp.SWIGLU_KERNELS["quack"]()
    except Exception:  # missing, or built for another CUDA/PyTorch: time the rest
        return {}
    compiled_norm = torch.compile(rms_norm, dynamic=False)
    return {
        "gate_up-matmul-quack": (lambda x, weight: gemm(x, weight.T), lambda x, weight: F.linear(x, weight)),
        "swiglu-quack": (swiglu, swiglu_pytorch),  # the "swiglu" family of models/fused
        "down-residual-rmsnorm-quack": (lambda x, weight, residual: compiled_norm(gemm_add(x, weight.T, residual), 1e-5),
                                        down_residual_norm_pytorch),
    }


def compare(shape: str, kernel: str, fused, pytorch, inputs, fused_inputs=None) -> dict:
    """Median µs of a fused kernel and of the compiled PyTorch code it replaces, and the relative
    error between their outputs where both take the same inputs (fused_inputs None); where the
    fused kernel takes others, its outputs' layout differs too, and only the times are compared."""
    compiled = torch.compile(pytorch, dynamic=False)
    same_inputs = fused_inputs is None
    fused_inputs = inputs if same_inputs else fused_inputs
    with torch.no_grad():
        error = relative_error(fused(*fused_inputs), compiled(*inputs)) if same_inputs else None
        fused_us = do_bench(lambda: fused(*fused_inputs), warmup=50, rep=300, return_mode="median") * 1e3
        pytorch_us = do_bench(lambda: compiled(*inputs), warmup=50, rep=300, return_mode="median") * 1e3
    record = {"shape": shape, "kernel": kernel, "fused_us": round(fused_us, 1), "pytorch_compiled_us": round(pytorch_us, 1),
              "speedup": round(pytorch_us / fused_us, 3)}
    if error is not None:
        record["relative_error"] = round(error, 5)
    return {**record, "device": torch.cuda.get_device_name(), "torch": torch.__version__}


# Attention ---------------------------------------------------------------------------------------

SDPA_KERNELS = {"sdpa-cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa-flash": SDPBackend.FLASH_ATTENTION,
                "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION}


def sdpa_attention(backend: SDPBackend):
    def attention(query, key, value):
        with sdpa_kernel(backend):
            return attention_module._sdpa(query, key, value)
    return attention


def attention_kernels() -> dict:
    """The attention kernels that run here, by name, each taking [batch, seq, heads, head_dim] tensors."""
    kernels = {name: sdpa_attention(backend) for name, backend in SDPA_KERNELS.items()}
    for package in attention_module.FLASH_BACKENDS:
        try:
            func = attention_module._import_flash(package)
        except Exception:  # missing, or built for another CUDA/PyTorch: time the rest
            continue
        kernels[package] = lambda query, key, value, func=func: attention_module._flash(func, query, key, value)
    return kernels


def attention_inputs(batch: int, seq: int, generator: torch.Generator):
    # As in the model: query and key come out of RoPE as new tensors, value is a slice of the qkv output.
    qkv = torch.randn(batch, seq, 3 * NUM_HEADS, HEAD_DIM, device="cuda", generator=generator, dtype=torch.bfloat16)
    query, key, value = qkv.split(NUM_HEADS, dim=2)
    return query.contiguous(), key.contiguous(), value


def time_attention(attention, query, key, value, grad_out, reference_out, reference_grad_query) -> dict:
    with torch.no_grad():
        forward_us = do_bench(lambda: attention(query, key, value), warmup=25, rep=200, return_mode="median") * 1e3
    inputs = [tensor.detach().requires_grad_() for tensor in (query, key, value)]

    def forward_backward():
        attention(*inputs).backward(grad_out)

    forward_backward_us = do_bench(forward_backward, warmup=25, rep=200, grad_to_none=inputs, return_mode="median") * 1e3
    for tensor in inputs:
        tensor.grad = None
    out = attention(*inputs)
    out.backward(grad_out)
    return {"forward_us": round(forward_us, 1), "forward_backward_us": round(forward_backward_us, 1),
            "out_relative_error": round(relative_error(out, reference_out), 5),
            "grad_query_relative_error": round(relative_error(inputs[0].grad, reference_grad_query), 5)}


def attention_reference(query, key, value, grad_out):
    """Float32 attention output and query gradient, for the kernels' errors."""
    inputs = [tensor.detach().float().requires_grad_() for tensor in (query, key, value)]
    out = sdpa_attention(SDPBackend.MATH)(*inputs)
    out.backward(grad_out.float())
    return out.detach(), inputs[0].grad


def layer_records(generator: torch.Generator) -> list:
    """quack's matrix products against compiled PyTorch, per shape."""
    records, quack_ops = [], quack_layer_ops()
    for shape, (batch, seq) in SHAPES.items():
        x = torch.randn(batch * seq, HIDDEN, device="cuda", generator=generator, dtype=torch.bfloat16)
        weight = (torch.randn(2 * INNER, HIDDEN, device="cuda", generator=generator) / HIDDEN**0.5).to(torch.bfloat16)
        inner = torch.randn(batch * seq, INNER, device="cuda", generator=generator, dtype=torch.bfloat16)
        down_weight = (torch.randn(HIDDEN, INNER, device="cuda", generator=generator) / INNER**0.5).to(torch.bfloat16)
        inputs = {"gate_up-matmul-quack": (x, weight), "swiglu-quack": (x, weight),
                  "down-residual-rmsnorm-quack": (inner, down_weight, x)}
        for kernel, (fused, pytorch) in quack_ops.items():
            try:
                records.append(compare(shape, kernel, fused, pytorch, inputs[kernel]))
            except Exception as error:  # a configuration quack does not support: report it, time the rest
                records.append({"shape": shape, "kernel": kernel, "error": f"{type(error).__name__}: {error}"[:500]})
    return records


def attention_records(generator: torch.Generator) -> list:
    """Every attention kernel that runs here, per shape."""
    records, kernels = [], attention_kernels()
    for shape, (batch, seq) in SHAPES.items():
        query, key, value = attention_inputs(batch, seq, generator)
        grad_out = torch.randn(query.shape, device="cuda", generator=generator, dtype=torch.bfloat16)
        reference_out, reference_grad_query = attention_reference(query, key, value, grad_out)
        for name, attention in kernels.items():
            record = {"shape": shape, "batch": batch, "seq": seq, "heads": NUM_HEADS, "head_dim": HEAD_DIM, "kernel": name}
            try:
                record.update(time_attention(attention, query, key, value, grad_out, reference_out, reference_grad_query))
            except Exception as error:  # a kernel that does not support this shape or GPU: report it, time the others
                record["error"] = f"{type(error).__name__}: {error}"[:500]
            records.append(dict(record, device=torch.cuda.get_device_name(), torch=torch.__version__))
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", help="also append the JSON lines to this file")
    parser.add_argument("--only", choices=["block"], help="time only the fused block's products")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/kernels.py needs a CUDA GPU")

    generator = torch.Generator(device="cuda").manual_seed(0)
    only_block = args.only == "block"
    records = block_records(generator) if only_block else layer_records(generator) + block_records(generator) + attention_records(generator)
    for record in records:
        line = json.dumps(record)
        print(line)
        if args.output:
            with open(args.output, "a") as file:
                file.write(line + "\n")


if __name__ == "__main__":
    main()
