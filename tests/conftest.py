"""Test-session set-up shared by all test modules."""

import os

import torch

# Without a CUDA GPU, Triton kernels run in Triton's CPU interpreter, so their tests check the same
# kernel code on any machine. Triton reads this when a kernel is defined, so it must be set before
# any test imports a kernel module.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
