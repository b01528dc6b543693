"""The "swiglu" and "mlp" kernel families (models/fused/mlp.py): the SwiGLU MLP with its activation in epilogues.

On the CPU the ops run stand-ins that are their PyTorch references (tests/fused_kernels.py), so
these tests check the backward's algebra and the wiring: the fused MLP's output and gradients
equal autograd's on the PyTorch MLP, and the whole model's training and evaluation calls equal
the PyTorch path's in float32. On a GPU with `quack-kernels`, the real kernels are checked against
the references at the Sudoku shape.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F

from models.fused import mlp
from models.fused.block import interleave_gate_up_weight
from models.kernel_choice import relative_error
from tests.fused_kernels import CONFIG, apply_on_cpu, same_heads, use_reference_kernels
from tests.test_model_act import assert_training_calls_match, evaluation_result, make_batch, training_calls


@pytest.fixture
def reference_calls(monkeypatch):
    """The stand-in kernels on the CPU; their calls by family (tests/fused_kernels.py)."""
    return use_reference_kernels(monkeypatch)


def test_fused_mlp_output_and_gradients_equal_autograd_on_the_pytorch_mlp(reference_calls):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(10, 32, generator=generator, requires_grad=True)
    gate_up_weight = torch.randn(2 * 48, 32, generator=generator, requires_grad=True)
    down_weight = torch.randn(32, 48, generator=generator, requires_grad=True)
    grad_out = torch.randn(10, 32, generator=generator)

    gate, up = (x @ gate_up_weight.t()).chunk(2, dim=-1)
    expected = (F.silu(gate) * up) @ down_weight.t()
    expected_grads = torch.autograd.grad(expected, (x, gate_up_weight, down_weight), grad_out)

    out = mlp.FusedSwiGLUMLP.apply(x, interleave_gate_up_weight(gate_up_weight), down_weight, "reference")
    grads = torch.autograd.grad(out, (x, gate_up_weight, down_weight), grad_out)
    assert len(reference_calls["mlp"]) == 1  # the fused op ran
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-4)


def test_fused_mlp_training_calls_equal_the_pytorch_path(reference_calls):
    fused, plain = same_heads(CONFIG)
    assert apply_on_cpu(fused, reference_calls, families=("mlp",)) == "reference MLP with gradient"
    batch = make_batch(CONFIG)
    fused_calls = training_calls(fused.train(), batch)
    # Per call, the last L and H updates run with gradient: 2 + 2 blocks.
    assert len(reference_calls["mlp"]) == 3 * (2 + 2)
    assert_training_calls_match(fused_calls, training_calls(plain.train(), batch))


def test_fused_swiglu_evaluation_equals_the_pytorch_path(reference_calls):
    fused, plain = same_heads({**CONFIG, "pos_encodings": "learned"})
    assert apply_on_cpu(fused, reference_calls, families=("swiglu",)) == "reference SwiGLU"
    batch = make_batch(CONFIG, seed=3)
    (logits, exact, z_L), reference = (evaluation_result(head, batch, CONFIG["halt_max_steps"]) for head in (fused, plain))
    # Per evaluation call, one segment: 2 H cycles of 2 L updates and 1 H update, of 2 blocks each.
    assert len(reference_calls["swiglu"]) == 3 * 2 * (2 + 1) * 2
    torch.testing.assert_close(logits, reference[0], rtol=1e-4, atol=1e-5)
    assert torch.equal(exact, reference[1])
    torch.testing.assert_close(z_L, reference[2], rtol=1e-4, atol=1e-5)


def test_fused_swiglu_and_mlp_training_calls_equal_the_pytorch_path(reference_calls):
    # Where the block family is not used, e.g. head_dim 24, the two families share each SwiGLU.
    config = {**CONFIG, "hidden_size": 48, "num_heads": 2, "puzzle_emb_ndim": 48}
    fused, plain = same_heads(config)
    assert apply_on_cpu(fused, reference_calls) == "reference SwiGLU, reference MLP with gradient"
    batch = make_batch(config)
    fused_calls = training_calls(fused.train(), batch)
    assert len(reference_calls["swiglu"]) == 3 * (3 + 1 + 4 + 2) * 2 and len(reference_calls["mlp"]) == 3 * (2 + 2)
    assert_training_calls_match(fused_calls, training_calls(plain.train(), batch))


def test_unsupported_shapes_keep_the_pytorch_mlp(reference_calls):
    odd, _ = same_heads({**CONFIG, "hidden_size": 40, "num_heads": 2, "puzzle_emb_ndim": 40})  # hidden not a multiple of 16
    assert apply_on_cpu(odd, reference_calls) == "off"
    assert not any(isinstance(module, mlp.FusedSwiGLU) for module in odd.modules())


def test_the_kernel_checks_cover_both_ops_of_the_mlp_and_the_swiglu(monkeypatch):
    assert list(mlp.MLP_KERNELS) == list(mlp.SWIGLU_KERNELS) == ["quack"]

    def wrong_backward():
        def wrong(*args):
            grad_gate_up, inner = mlp.swiglu_backward_product_reference(*args)
            return grad_gate_up * 1.1, inner

        return mlp.MLPKernels(mlp.swiglu_with_product_reference, wrong)

    def wrong_swiglu():
        return lambda x, weight: mlp.swiglu_reference(x, weight) * 1.1

    calls = use_reference_kernels(monkeypatch)
    monkeypatch.setattr(mlp, "MLP_KERNELS", {"quack": wrong_backward, "other": lambda: mlp.REFERENCE})
    monkeypatch.setattr(mlp, "SWIGLU_KERNELS", {"quack": wrong_swiglu})
    head, _ = same_heads(CONFIG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert apply_on_cpu(head, calls, families=("swiglu", "mlp")) == "other MLP with gradient"
    messages = sorted(str(warning.message) for warning in caught)
    assert len(messages) == 2
    assert "Fused mlp kernels 'quack' skipped on cpu" in messages[0] and "Fused swiglu kernels 'quack' skipped on cpu" in messages[1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@torch.no_grad()
def test_quack_mlp_kernels_on_gpu_match_the_references_at_the_sudoku_shape():
    pytest.importorskip("quack.gemm_interface")
    # The check apply_fused_kernels runs before using them.
    mlp.check_mlp_kernels(mlp.MLP_KERNELS["quack"], torch.device("cuda", torch.cuda.current_device()), torch.bfloat16)
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@torch.no_grad()
def test_quack_swiglu_on_gpu_matches_the_reference_at_the_model_shape():
    pytest.importorskip("quack.gemm_interface")
    mlp.check_swiglu_kernel(mlp.SWIGLU_KERNELS["quack"], torch.device("cuda", torch.cuda.current_device()), torch.bfloat16)
    generator = torch.Generator(device="cuda").manual_seed(0)
    # The model's MLP at the Sudoku batch: hidden 512, inner 1536, 768 x 82 tokens.
    x = torch.randn(768 * 82, 512, device="cuda", generator=generator).to(torch.bfloat16)
    weight = (torch.randn(2 * 1536, 512, device="cuda", generator=generator) / 512**0.5).to(torch.bfloat16)
    expected = mlp.swiglu_reference(x, weight).float()
    out = mlp.SWIGLU_KERNELS["quack"]()(x, weight).float()
    # quack applies silu(gate) * up to the float32 accumulators, without rounding gate and up first.
    assert relative_error(out, expected) < 1e-2
