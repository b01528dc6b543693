"""Which fused SwiGLU kernel the gradient-free passes use: the first that imports, runs and matches.

On the CPU the kernels are stand-ins (the reference itself, a wrong one, failing ones); on a GPU
with the `quack-kernels` package, quack's real SwiGLU epilogue is checked at the model's shape.
"""

import warnings

import pytest
import torch

from models.kernels import SWIGLU_KERNELS, choose_swiglu_kernel, swiglu_kernel_name, swiglu_reference

CPU = torch.device("cpu")


def missing_package(x, weight):
    raise ImportError("No module named 'quack'")


def failing_kernel(x, weight):
    raise RuntimeError("compilation failed")


def wrong_kernel(x, weight):
    return swiglu_reference(x, weight) * 1.1


def choose(**kernels):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        name = choose_swiglu_kernel(CPU, torch.float32, kernels)
    return name, [str(warning.message) for warning in caught]


def test_quack_is_preferred_to_triton():
    assert list(SWIGLU_KERNELS) == ["quack", "triton"]
    assert choose(quack=swiglu_reference, triton=swiglu_reference) == ("quack", [])


def test_a_package_that_is_not_installed_is_skipped_silently():
    assert choose(quack=missing_package, triton=swiglu_reference) == ("triton", [])


@pytest.mark.parametrize("broken", [failing_kernel, wrong_kernel], ids=["raises", "wrong values"])
def test_a_kernel_that_fails_or_disagrees_is_skipped_with_a_warning(broken):
    name, messages = choose(quack=broken, triton=swiglu_reference)
    assert name == "triton"
    assert len(messages) == 1 and "'quack' skipped" in messages[0]


def test_no_usable_kernel_leaves_the_pytorch_path():
    name, messages = choose(quack=failing_kernel, triton=missing_package)
    assert name is None and len(messages) == 1


def test_only_cuda_half_precision_gets_a_kernel():
    assert swiglu_kernel_name("cpu", 0, torch.bfloat16) is None
    assert swiglu_kernel_name("cuda", 0, torch.float32) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@torch.no_grad()
def test_quack_swiglu_on_gpu_matches_the_reference_at_the_model_shape():
    pytest.importorskip("quack.gemm_interface")
    assert swiglu_kernel_name("cuda", torch.cuda.current_device(), torch.bfloat16) == "quack"
    generator = torch.Generator(device="cuda").manual_seed(0)
    # The model's MLP at the Sudoku batch: hidden 512, inner 1536, 768 x 82 tokens.
    x = torch.randn(768 * 82, 512, device="cuda", generator=generator).to(torch.bfloat16)
    weight = (torch.randn(2 * 1536, 512, device="cuda", generator=generator) / 512**0.5).to(torch.bfloat16)
    expected = swiglu_reference(x, weight).float()
    out = SWIGLU_KERNELS["quack"](x, weight).float()
    # quack applies silu(gate) * up to the float32 accumulators, without rounding gate and up first.
    assert ((out - expected).norm() / expected.norm()).item() < 1e-2
