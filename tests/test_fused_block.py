"""The "block" kernel family (models/fused/block.py): each block of a gradient-free pass in fused epilogues.

On the CPU the block's ops run stand-ins that are their PyTorch references (tests/fused_kernels.py),
so these tests check the algebra: the interleaved weights, the RoPE tables, the deferred RMSNorms
and the kernel check. In float32 the fused model must then agree with the PyTorch path to
rounding. On a GPU with `quack-kernels`, the real kernels are checked against the references at
the Sudoku shape.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F

from models.fused import block
from models.kernel_choice import relative_error
from models.layers import RotaryEmbedding, apply_rotary_pos_emb
from tests.fused_kernels import CONFIG, apply_on_cpu, same_heads, use_reference_kernels
from tests.test_model_act import assert_training_calls_match, evaluation_result, make_batch, training_calls

CPU = torch.device("cpu")


def test_interleaved_rope_equals_rotate_half_up_to_the_same_permutation_of_q_and_k():
    num_heads, head_dim, hidden, batch_size, seq_len = 2, 16, 32, 2, 5
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size * seq_len, hidden, generator=generator, dtype=torch.float64)
    weight = torch.randn(3 * hidden, hidden, generator=generator, dtype=torch.float64)
    rope = RotaryEmbedding(dim=head_dim, max_position_embeddings=seq_len, base=10000.0)
    cos, sin = (table.double() for table in rope())

    qkv = (x @ weight.t()).view(batch_size, seq_len, 3 * num_heads, head_dim)
    query, key = apply_rotary_pos_emb(qkv[:, :, :num_heads], qkv[:, :, num_heads : 2 * num_heads], cos, sin)

    tables = block.rope_tables(block.rope_inv_freq(head_dim, 10000.0), batch_size, seq_len, num_heads, head_dim, CPU)
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


@pytest.fixture
def reference_calls(monkeypatch):
    """The stand-in kernels on the CPU; their calls by family (tests/fused_kernels.py)."""
    return use_reference_kernels(monkeypatch)


def fused_block_heads(calls: dict, **overrides):
    """A head with the block family applied (and nothing else), a plain head with the same weights,
    and what apply_fused_kernels said."""
    fused, plain = same_heads({**CONFIG, **overrides})
    return fused, plain, apply_on_cpu(fused, calls, families=("block",))


def test_fused_block_training_calls_equal_the_pytorch_path(reference_calls):
    fused, plain, description = fused_block_heads(reference_calls)
    reference_block = reference_calls["block"]
    assert description == "reference block"
    batch = make_batch(CONFIG)
    fused_calls = training_calls(fused.train(), batch)
    # Per call, 3 gradient-free L updates and 1 H update, and the Q-target segment's 4 + 2, of 2 blocks each.
    assert len(reference_block) == 3 * (3 + 1 + 4 + 2) * 2
    assert_training_calls_match(fused_calls, training_calls(plain.train(), batch))


def test_fused_block_evaluation_without_rope_equals_the_pytorch_path(reference_calls):
    fused, plain, _ = fused_block_heads(reference_calls, pos_encodings="learned")
    reference_block = reference_calls["block"]
    batch = make_batch(CONFIG, seed=3)
    (logits, exact, z_L), reference = (evaluation_result(head, batch, CONFIG["halt_max_steps"]) for head in (fused, plain))
    assert reference_block  # the fused path ran
    torch.testing.assert_close(logits, reference[0], rtol=1e-4, atol=1e-5)
    assert torch.equal(exact, reference[1])
    torch.testing.assert_close(z_L, reference[2], rtol=1e-4, atol=1e-5)


def test_fused_block_evaluation_of_another_batch_size_equals_the_pytorch_path(reference_calls):
    # The module keeps the RoPE positions of the training batch; a larger batch gets its own.
    fused, plain, _ = fused_block_heads(reference_calls)
    reference_block = reference_calls["block"]
    batch = make_batch({**CONFIG, "batch_size": 5}, seed=4)
    (logits, exact, z_L), reference = (evaluation_result(head, batch, CONFIG["halt_max_steps"]) for head in (fused, plain))
    assert reference_block and all(shape[0] == 5 * (20 + 1) for shape in reference_block)
    torch.testing.assert_close(logits, reference[0], rtol=1e-4, atol=1e-5)
    assert torch.equal(exact, reference[1])
    torch.testing.assert_close(z_L, reference[2], rtol=1e-4, atol=1e-5)


def test_the_fused_block_stays_off_for_unsupported_shapes(reference_calls):
    odd, _ = same_heads({**CONFIG, "hidden_size": 40, "num_heads": 2, "puzzle_emb_ndim": 40})  # head_dim 20
    assert apply_on_cpu(odd, reference_calls, families=("block",)) == "off"
    batch = make_batch(CONFIG)
    with torch.no_grad():
        odd(carry=odd.initial_carry(batch), batch=batch, return_keys=[])
    assert reference_calls["block"] == []


def chosen(monkeypatch, candidates: dict):
    """What apply_fused_kernels makes of these block kernel sets on the CPU, and its warnings."""
    use_reference_kernels(monkeypatch)
    monkeypatch.setattr(block, "BLOCK_KERNELS", candidates)
    head, _ = same_heads(CONFIG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        description = apply_on_cpu(head, {}, families=("block",))
    return description, [str(warning.message) for warning in caught]


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


def test_the_kernel_check_covers_every_op_and_skips_missing_packages_silently(monkeypatch):
    assert list(block.BLOCK_KERNELS) == ["quack"]
    assert chosen(monkeypatch, {"quack": lambda: block.REFERENCE}) == ("quack block", [])
    assert chosen(monkeypatch, {"quack": missing_package}) == ("off", [])
    for broken in (failing_kernels, wrong_kernels):
        description, messages = chosen(monkeypatch, {"quack": broken, "other": lambda: block.REFERENCE})
        assert description == "other block"
        assert len(messages) == 1 and "Fused block kernels 'quack' skipped on cpu" in messages[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@torch.no_grad()
def test_quack_block_kernels_on_gpu_match_the_references_at_the_sudoku_shape():
    pytest.importorskip("quack.epilogue.frontend")
    # The check apply_fused_kernels runs before using them.
    block.check_kernels(block.BLOCK_KERNELS["quack"], torch.device("cuda", torch.cuda.current_device()), torch.bfloat16)
    kernels = block.BLOCK_KERNELS["quack"]()
    generator = torch.Generator(device="cuda").manual_seed(0)
    tokens, hidden, num_heads, head_dim, inner = 768 * 82, 512, 8, 64, 1536

    def random(*shape, scale=1.0):
        return (torch.randn(*shape, device="cuda", generator=generator) * scale).to(torch.bfloat16)

    x, residual = random(tokens, hidden), random(tokens, hidden)
    rstd = torch.rand(tokens, device="cuda", generator=generator) + 0.5
    tables = block.rope_tables(block.rope_inv_freq(head_dim, 10000.0), 768, 82, num_heads, head_dim, torch.device("cuda"))
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
