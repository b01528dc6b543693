"""The fused SwiGLU MLP of the passes with gradient (models/kernels/mlp.py).

On the CPU its two ops run their PyTorch references, so these tests check the backward's algebra and
the wiring: the fused MLP's output and gradients equal autograd's on the PyTorch MLP, and the whole
model's training calls equal the PyTorch path's in float32. On a GPU with `quack-kernels`, the real
kernels are checked against the references at the Sudoku shape.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F

import models.layers as layers_module
from models.kernels import mlp, relative_error
from models.kernels.block import interleave_gate_up_weight
from tests.test_model_act import assert_training_calls_match, count_reference_calls, fused_and_plain_heads, make_batch, training_calls

CONFIG = dict(
    batch_size=3, seq_len=20, puzzle_emb_ndim=64, num_puzzle_identifiers=4, vocab_size=6,
    H_cycles=2, L_cycles=2, H_layers=2, L_layers=2, hidden_size=64, expansion=2, num_heads=2,
    pos_encodings="rope", halt_max_steps=3, halt_exploration_prob=0.5, forward_dtype="float32",
)  # fmt: skip


def test_fused_mlp_output_and_gradients_equal_autograd_on_the_pytorch_mlp():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(10, 32, generator=generator, requires_grad=True)
    gate_up_weight = torch.randn(2 * 48, 32, generator=generator, requires_grad=True)
    down_weight = torch.randn(32, 48, generator=generator, requires_grad=True)
    grad_out = torch.randn(10, 32, generator=generator)

    gate, up = (x @ gate_up_weight.t()).chunk(2, dim=-1)
    expected = (F.silu(gate) * up) @ down_weight.t()
    expected_grads = torch.autograd.grad(expected, (x, gate_up_weight, down_weight), grad_out)

    out = mlp.FusedSwiGLUMLP.apply(x, interleave_gate_up_weight(gate_up_weight), down_weight)
    grads = torch.autograd.grad(out, (x, gate_up_weight, down_weight), grad_out)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-4)


@pytest.fixture
def fused_mlp_on_cpu(monkeypatch):
    """Take the fused MLP path in passes with gradient on the CPU, where its ops run their references."""
    if torch.cuda.is_available():
        pytest.skip("the CPU run; the GPU test covers CUDA")
    monkeypatch.setattr(layers_module, "use_fused_mlp", lambda x: torch.is_grad_enabled())
    return count_reference_calls(monkeypatch, mlp, "swiglu_with_product")


def test_fused_mlp_training_calls_equal_the_pytorch_path(fused_mlp_on_cpu):
    fused, plain = fused_and_plain_heads(CONFIG)
    batch = make_batch(CONFIG)
    fused_calls = training_calls(fused.train(), batch)
    # Per call, the last L and H updates run with gradient: 2 + 2 blocks.
    assert len(fused_mlp_on_cpu) == 3 * (2 + 2)
    assert_training_calls_match(fused_calls, training_calls(plain.train(), batch))


def test_kernel_choice_checks_both_ops():
    def wrong_backward():
        def wrong(*args):
            grad_gate_up, inner = mlp.swiglu_backward_product_reference(*args)
            return grad_gate_up * 1.1, inner

        return mlp.MLPKernels(mlp.swiglu_with_product_reference, wrong)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert mlp.choose_mlp_kernels(torch.device("cpu"), torch.float32, {"quack": wrong_backward}) is None
    assert len(caught) == 1 and "'quack' skipped" in str(caught[0].message)
    assert mlp.choose_mlp_kernels(torch.device("cpu"), torch.float32, {"quack": lambda: mlp.REFERENCE}) == "quack"
    assert mlp.mlp_kernel_name("cpu", 0, torch.bfloat16) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@torch.no_grad()
def test_quack_mlp_kernels_on_gpu_match_the_references_at_the_sudoku_shape():
    pytest.importorskip("quack.gemm_interface")
    assert mlp.mlp_kernel_name("cuda", torch.cuda.current_device(), torch.bfloat16) == "quack"
    kernels = mlp.MLP_KERNELS["quack"]()
    generator = torch.Generator(device="cuda").manual_seed(0)
    tokens, hidden, inner = 768 * 82, 512, 1536

    def random(*shape, scale=1.0):
        return (torch.randn(*shape, device="cuda", generator=generator) * scale).to(torch.bfloat16)

    cases = [
        (kernels.swiglu_with_product, mlp.swiglu_with_product_reference, (random(tokens, hidden), random(2 * inner, hidden, scale=hidden**-0.5))),
        (kernels.swiglu_backward_product, mlp.swiglu_backward_product_reference,
         (random(tokens, hidden), random(hidden, inner, scale=inner**-0.5), random(tokens, 2 * inner))),
    ]
    for kernel, reference, args in cases:
        for out, want in zip(kernel(*args), reference(*args), strict=True):
            assert out.shape == want.shape and out.dtype == want.dtype
            error = relative_error(out, want)
            assert error < 5e-3, (reference.__name__, error)
