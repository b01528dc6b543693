"""The fused block of the gradient-free passes (models/kernels/block.py).

On the CPU the block's ops run their PyTorch references, so these tests check the algebra: the
interleaved weights, the RoPE tables, the deferred RMSNorms and the kernel choice. In float32 the
fused model must then agree with the PyTorch path to rounding. On a GPU with `quack-kernels`, the
real kernels are checked against the references at the Sudoku shape.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F

import models.hrm.hrm_act_v1 as hrm_module
from models.kernels import block, relative_error
from models.layers import RotaryEmbedding, apply_rotary_pos_emb
from tests.test_model_act import (assert_training_calls_match, count_reference_calls, evaluation_result, fused_and_plain_heads, make_batch,
                                   training_calls)

CPU = torch.device("cpu")
CONFIG = dict(
    batch_size=3, seq_len=20, puzzle_emb_ndim=64, num_puzzle_identifiers=4, vocab_size=6,
    H_cycles=2, L_cycles=2, H_layers=2, L_layers=2, hidden_size=64, expansion=2, num_heads=2,
    pos_encodings="rope", halt_max_steps=3, halt_exploration_prob=0.5, forward_dtype="float32",
)  # fmt: skip


def test_interleaved_rope_equals_rotate_half_up_to_the_same_permutation_of_q_and_k():
    num_heads, head_dim, hidden, batch_size, seq_len = 2, 16, 32, 2, 5
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size * seq_len, hidden, generator=generator, dtype=torch.float64)
    weight = torch.randn(3 * hidden, hidden, generator=generator, dtype=torch.float64)
    rope = RotaryEmbedding(dim=head_dim, max_position_embeddings=seq_len, base=10000.0)
    cos, sin = (table.double() for table in rope())

    qkv = (x @ weight.t()).view(batch_size, seq_len, 3 * num_heads, head_dim)
    query, key = apply_rotary_pos_emb(qkv[:, :, :num_heads], qkv[:, :, num_heads : 2 * num_heads], cos, sin)

    tables = block.rope_tables(rope.inv_freq, batch_size, seq_len, num_heads, head_dim, CPU)
    interleaved = block.interleave_qkv_weight(weight, num_heads, head_dim)
    fused = block.rope_qkv_reference(x, interleaved, torch.ones(len(x)), *tables).view(batch_size, seq_len, 3 * num_heads, head_dim)
    # Head dims come out ordered (0, d/2, 1, d/2 + 1, ...).
    order = torch.arange(head_dim).view(2, head_dim // 2).t().reshape(-1)
    # The reference computes in float32; a wrong pairing would be off by the values' own size (~5).
    torch.testing.assert_close(fused[:, :, :num_heads], query[..., order], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused[:, :, num_heads : 2 * num_heads], key[..., order], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused[:, :, 2 * num_heads :], qkv[:, :, 2 * num_heads :], rtol=1e-5, atol=1e-5)  # values not rotated


def test_without_rope_the_tables_rotate_nothing():
    tables = block.rope_tables(None, 2, 7, 2, 16, CPU)
    assert torch.equal(tables.positions, torch.arange(7.0).repeat(2))
    assert not tables.frequencies.any()
    x, weight = torch.randn(14, 32), torch.randn(96, 32)
    torch.testing.assert_close(block.rope_qkv_reference(x, weight, torch.ones(14), *tables), x @ weight.t())


def test_interleaved_gate_up_and_the_deferred_scale_give_the_swiglu_of_the_normalised_input():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(10, 32, generator=generator, dtype=torch.float64)
    weight = torch.randn(2 * 48, 32, generator=generator, dtype=torch.float64)
    rstd = torch.rand(10, generator=generator, dtype=torch.float64) + 0.5
    gate, up = ((x * rstd[:, None]) @ weight.t()).chunk(2, dim=-1)
    fused = block.rstd_swiglu_reference(x, block.interleave_gate_up_weight(weight), rstd)
    torch.testing.assert_close(fused, F.silu(gate) * up, rtol=1e-5, atol=1e-5)  # float32 math


def test_residual_rms_returns_the_sum_and_its_inverse_rms():
    x, weight, residual = torch.randn(6, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    residual_rstd = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0, 1.5], dtype=torch.float64)
    total, rstd = block.residual_rms_reference(x, weight, residual, residual_rstd, 1e-5)
    expected = x @ weight.t() + residual * residual_rstd[:, None]
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-5)  # float32 math
    torch.testing.assert_close(rstd, (1 / (expected.square().mean(-1) + 1e-5).sqrt()).float(), rtol=1e-5, atol=0)


def build_pair(**overrides):
    return fused_and_plain_heads({**CONFIG, **overrides})


@pytest.fixture
def fused_block_on_cpu(monkeypatch):
    """Take the fused block path on the CPU, where its ops run their PyTorch references."""
    if torch.cuda.is_available():
        pytest.skip("the CPU run; the GPU tests cover CUDA")
    monkeypatch.setattr(hrm_module, "use_fused_block", lambda hidden_states: True)
    return count_reference_calls(monkeypatch, block, "rope_qkv")


def test_fused_block_training_calls_equal_the_pytorch_path(fused_block_on_cpu):
    fused, plain = build_pair()
    batch = make_batch(CONFIG)
    fused_calls = training_calls(fused.train(), batch)
    # Per call, 3 gradient-free L updates and 1 H update, the Q-target segment's 4 + 2, and the 1 + 1
    # updates with gradient (their qkv + RoPE product), of 2 blocks each.
    assert len(fused_block_on_cpu) == 3 * (3 + 1 + 4 + 2 + 1 + 1) * 2
    assert_training_calls_match(fused_calls, training_calls(plain.train(), batch))


def test_rope_qkv_with_gradient_has_the_reference_output_and_gradients():
    generator = torch.Generator().manual_seed(0)
    tokens, num_heads, head_dim = 6, 2, 16
    hidden = num_heads * head_dim
    inv_freq = RotaryEmbedding(dim=head_dim, max_position_embeddings=3, base=10000.0).inv_freq
    tables = block.rope_tables(inv_freq, 2, 3, num_heads, head_dim, CPU)
    x = torch.randn(tokens, hidden, generator=generator, requires_grad=True)
    weight = torch.randn(3 * hidden, hidden, generator=generator, requires_grad=True)
    grad_qkv = torch.randn(tokens, 3 * hidden, generator=generator)

    expected = block.rope_qkv_reference(x, weight, torch.ones(tokens), *tables)
    expected_grads = torch.autograd.grad(expected, (x, weight), grad_qkv)
    qkv = block.RopeQKVWithGradient.apply(x, weight, *tables)
    grads = torch.autograd.grad(qkv, (x, weight), grad_qkv)
    torch.testing.assert_close(qkv, expected, rtol=1e-5, atol=1e-5)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-5)


def test_fused_block_evaluation_without_rope_equals_the_pytorch_path(fused_block_on_cpu):
    fused, plain = build_pair(pos_encodings="learned")
    batch = make_batch(CONFIG, seed=3)
    (logits, exact, z_L), reference = (evaluation_result(head, batch, CONFIG["halt_max_steps"]) for head in (fused, plain))
    assert fused_block_on_cpu  # the fused path ran
    torch.testing.assert_close(logits, reference[0], rtol=1e-4, atol=1e-5)
    assert torch.equal(exact, reference[1])
    torch.testing.assert_close(z_L, reference[2], rtol=1e-4, atol=1e-5)


def test_the_fused_block_stays_off_without_the_setting_or_for_unsupported_shapes(fused_block_on_cpu):
    fused, plain = build_pair()
    fused_odd, _ = build_pair(hidden_size=40, num_heads=2, puzzle_emb_ndim=40)  # head_dim 20
    batch = make_batch(CONFIG)
    for head in (plain, fused_odd):
        with torch.no_grad():
            head(carry=head.initial_carry(batch), batch=batch, return_keys=[])
    assert fused_block_on_cpu == []
    with torch.no_grad():
        fused(carry=fused.initial_carry(batch), batch=batch, return_keys=[])
    assert fused_block_on_cpu


def choose(**kernel_sets):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        name = block.choose_block_kernels(CPU, torch.float32, kernel_sets)
    return name, [str(warning.message) for warning in caught]


def missing_package():
    raise ImportError("No module named 'quack'")


def failing_kernels():
    def fail(*args):
        raise RuntimeError("compilation failed")

    return block.BlockKernels(block.rope_qkv_reference, fail, block.rstd_swiglu_reference)


def wrong_kernels():
    def wrong_swiglu(*args):
        return block.rstd_swiglu_reference(*args) * 1.1

    return block.BlockKernels(block.rope_qkv_reference, block.residual_rms_reference, wrong_swiglu)


def test_kernel_choice_checks_every_op_and_skips_missing_packages_silently():
    assert list(block.BLOCK_KERNELS) == ["quack"]
    assert choose(quack=lambda: block.REFERENCE) == ("quack", [])
    assert choose(quack=missing_package) == (None, [])
    for broken in (failing_kernels, wrong_kernels):
        name, messages = choose(quack=broken, other=lambda: block.REFERENCE)
        assert name == "other"
        assert len(messages) == 1 and "'quack' skipped" in messages[0]
    assert block.block_kernel_name("cpu", 0, torch.bfloat16) is None
    assert block.block_kernel_name("cuda", 0, torch.float32) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@torch.no_grad()
def test_quack_block_kernels_on_gpu_match_the_references_at_the_sudoku_shape():
    pytest.importorskip("quack.epilogue.frontend")
    assert block.block_kernel_name("cuda", torch.cuda.current_device(), torch.bfloat16) == "quack"
    kernels = block.BLOCK_KERNELS["quack"]()
    generator = torch.Generator(device="cuda").manual_seed(0)
    tokens, hidden, num_heads, head_dim, inner = 768 * 82, 512, 8, 64, 1536

    def random(*shape, scale=1.0):
        return (torch.randn(*shape, device="cuda", generator=generator) * scale).to(torch.bfloat16)

    x, residual = random(tokens, hidden), random(tokens, hidden)
    rstd = torch.rand(tokens, device="cuda", generator=generator) + 0.5
    inv_freq = RotaryEmbedding(dim=head_dim, max_position_embeddings=82, base=10000.0).inv_freq.cuda()
    tables = block.rope_tables(inv_freq, 768, 82, num_heads, head_dim, torch.device("cuda"))
    cases = [
        (kernels.rope_qkv, block.rope_qkv_reference, (x, random(3 * hidden, hidden, scale=hidden**-0.5), rstd, *tables)),
        (kernels.residual_rms, block.residual_rms_reference, (x, random(hidden, hidden, scale=hidden**-0.5), residual, rstd, 1e-5)),
        (kernels.rstd_swiglu, block.rstd_swiglu_reference, (x, random(2 * inner, hidden, scale=hidden**-0.5), rstd)),
        (kernels.residual_rms, block.residual_rms_reference, (random(tokens, inner), random(hidden, inner, scale=inner**-0.5), residual, rstd, 1e-5)),
    ]
    for kernel, reference, args in cases:
        outputs, expected = kernel(*args), reference(*args)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        expected = expected if isinstance(expected, tuple) else (expected,)
        for out, want in zip(outputs, expected):
            assert out.shape == want.shape and out.dtype == want.dtype
            error = relative_error(out, want)
            # Both round once from float32; what is left is the order of the float32 sums.
            assert error < 5e-3, (reference.__name__, error)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_quack_rope_qkv_with_gradient_on_gpu_matches_the_reference_at_the_sudoku_shape():
    pytest.importorskip("quack.epilogue.frontend")
    assert block.block_kernel_name("cuda", torch.cuda.current_device(), torch.bfloat16) == "quack"
    generator = torch.Generator(device="cuda").manual_seed(0)
    tokens, hidden, num_heads, head_dim = 768 * 82, 512, 8, 64
    inv_freq = RotaryEmbedding(dim=head_dim, max_position_embeddings=82, base=10000.0).inv_freq.cuda()
    tables = block.rope_tables(inv_freq, 768, 82, num_heads, head_dim, torch.device("cuda"))
    x = torch.randn(tokens, hidden, device="cuda", generator=generator).to(torch.bfloat16).requires_grad_()
    weight = (torch.randn(3 * hidden, hidden, device="cuda", generator=generator) * hidden**-0.5).to(torch.bfloat16).requires_grad_()
    grad_qkv = torch.randn(tokens, 3 * hidden, device="cuda", generator=generator).to(torch.bfloat16)

    qkv = block.RopeQKVWithGradient.apply(x, weight, *tables)
    grads = torch.autograd.grad(qkv, (x, weight), grad_qkv)
    # The reference in float32, with autograd's backward.
    x32, weight32 = (tensor.detach().float().requires_grad_() for tensor in (x, weight))
    expected = block.rope_qkv_reference(x32, weight32, torch.ones(tokens, device="cuda"), *tables)
    expected_grads = torch.autograd.grad(expected, (x32, weight32), grad_qkv.float())
    for out, want in zip((qkv, *grads), (expected, *expected_grads), strict=True):
        assert out.shape == want.shape and out.dtype == torch.bfloat16
        assert relative_error(out, want) < 1e-2
