"""Time the attention kernels available on this GPU at the shapes of the training steps: PyTorch SDPA
with each of its kernels, and FlashAttention 2, 3 and 4 where installed.

    python benchmarks/attention.py [--output FILE]

Prints one JSON line per shape and kernel: median microseconds of the forward alone (as the step's
40 gradient-free layer passes run it) and of forward + backward (the 8 layer passes with gradient),
and the relative error of the output and of the query gradient against float32 attention. A kernel
that fails at a shape gets a line with its error instead.
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

from models import layers  # noqa: E402

# (batch, sequence incl. the puzzle position) of each training shape; default architecture sizes.
SHAPES = {"sudoku": (768, 82), "maze": (96, 901)}
NUM_HEADS, HEAD_DIM = 8, 64

SDPA_KERNELS = {"sdpa-cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa-flash": SDPBackend.FLASH_ATTENTION,
                "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION}
FLASH_PACKAGES = (layers.FLASH_ATTN_2, layers.FLASH_ATTN_3, layers.FLASH_ATTN_4)


def sdpa_attention(backend: SDPBackend):
    def attention(query, key, value):
        with sdpa_kernel(backend):
            out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
        return out.transpose(1, 2)
    return attention


def available_kernels() -> dict:
    kernels = {name: sdpa_attention(backend) for name, backend in SDPA_KERNELS.items()}
    for package in FLASH_PACKAGES:
        func = layers._import_flash(package)
        if func is not None:
            kernels[package] = lambda query, key, value, func=func: func(query, key, value, causal=False)
    return kernels


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.float() - reference).norm() / reference.norm()).item()


def make_inputs(batch: int, seq: int, generator: torch.Generator):
    # As in the model: query and key come out of RoPE as new tensors, value is a slice of the qkv output.
    qkv = torch.randn(batch, seq, 3 * NUM_HEADS, HEAD_DIM, device="cuda", generator=generator, dtype=torch.bfloat16)
    query, key, value = qkv.split(NUM_HEADS, dim=2)
    return query.contiguous(), key.contiguous(), value


def measure(attention, query, key, value, grad_out, reference_out, reference_grad_query) -> dict:
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


def reference(query, key, value, grad_out):
    inputs = [tensor.detach().float().requires_grad_() for tensor in (query, key, value)]
    with sdpa_kernel(SDPBackend.MATH):
        out = sdpa_attention(SDPBackend.MATH)(*inputs)
    out.backward(grad_out.float())
    return out.detach(), inputs[0].grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", help="also append the JSON lines to this file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/attention.py needs a CUDA GPU")

    generator = torch.Generator(device="cuda").manual_seed(0)
    kernels = available_kernels()
    records = []
    for shape, (batch, seq) in SHAPES.items():
        query, key, value = make_inputs(batch, seq, generator)
        grad_out = torch.randn(query.shape, device="cuda", generator=generator, dtype=torch.bfloat16)
        reference_out, reference_grad_query = reference(query, key, value, grad_out)
        for name, attention in kernels.items():
            record = {"shape": shape, "batch": batch, "seq": seq, "heads": NUM_HEADS, "head_dim": HEAD_DIM, "kernel": name}
            try:
                record.update(measure(attention, query, key, value, grad_out, reference_out, reference_grad_query))
            except Exception as error:  # a kernel that does not support this shape or GPU: report it, time the others
                record["error"] = f"{type(error).__name__}: {error}"[:500]
            record.update(device=torch.cuda.get_device_name(), torch=torch.__version__)
            records.append(record)
            print(json.dumps(record), flush=True)
    if args.output:
        with open(args.output, "a") as file:
            file.writelines(json.dumps(record) + "\n" for record in records)


if __name__ == "__main__":
    main()
