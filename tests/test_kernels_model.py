"""The fused-kernel path of the whole model against the PyTorch path, with the same weights.

On a machine without CUDA the kernels run in Triton's CPU interpreter: the layers' device check is
bypassed so that the fused path is taken, in float32, where the two paths must agree to rounding.
On a GPU the real kernels run in bfloat16, compiled, as training runs them.
"""

import pytest
import torch

pytest.importorskip("triton")

import models.layers as layers_module  # noqa: E402
from models.kernels import kernels_usable  # noqa: E402
from tests.test_model_act import (  # noqa: E402
    assert_training_calls_match,
    evaluation_result,
    fused_and_plain_heads,
    make_batch,
    training_calls,
)

# Small, but with shapes the kernel handles: hidden 64, inner 256.
CONFIG = dict(
    batch_size=3, seq_len=20, puzzle_emb_ndim=64, num_puzzle_identifiers=4, vocab_size=6,
    H_cycles=2, L_cycles=2, H_layers=2, L_layers=2, hidden_size=64, expansion=2, num_heads=2,
    pos_encodings="rope", halt_max_steps=3, halt_exploration_prob=0.5, forward_dtype="float32",
)  # fmt: skip


def build_pair(**overrides):
    return fused_and_plain_heads({**CONFIG, **overrides})


@pytest.fixture
def fused_on_cpu(monkeypatch):
    """Take the fused path in gradient-free passes on the CPU (kernels in Triton's interpreter)."""
    if torch.cuda.is_available():
        pytest.skip("the CPU interpreter run; the GPU test below covers CUDA")

    def gradient_free(hidden_states: torch.Tensor) -> bool:
        return not torch.is_grad_enabled()

    monkeypatch.setattr(layers_module, "use_fused_kernels", gradient_free)


def test_every_layer_takes_the_fused_path_for_these_shapes():
    fused, plain = build_pair()
    blocks = list(fused.model.inner.H_level.layers) + list(fused.model.inner.L_level.layers)
    assert all(block.mlp.fused for block in blocks)
    plain_blocks = list(plain.model.inner.H_level.layers) + list(plain.model.inner.L_level.layers)
    assert not any(block.mlp.fused for block in plain_blocks)


def test_unsupported_shapes_keep_the_pytorch_path():
    fused, _ = build_pair(hidden_size=40, num_heads=2, puzzle_emb_ndim=40)  # hidden not a multiple of 16
    assert not fused.model.inner.L_level.layers[0].mlp.fused


def test_fused_training_calls_equal_the_pytorch_path(fused_on_cpu):
    fused, plain = build_pair()
    batch = make_batch(CONFIG)
    assert_training_calls_match(training_calls(fused.train(), batch), training_calls(plain.train(), batch))


def test_fused_evaluation_equals_the_pytorch_path(fused_on_cpu):
    fused, plain = build_pair(pos_encodings="learned")
    batch = make_batch(CONFIG, seed=3)
    (logits, exact, z_L), reference = (evaluation_result(head, batch, CONFIG["halt_max_steps"]) for head in (fused, plain))
    torch.testing.assert_close(logits, reference[0], rtol=1e-4, atol=1e-5)
    assert torch.equal(exact, reference[1])
    torch.testing.assert_close(z_L, reference[2], rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_kernels_on_gpu_track_the_pytorch_path_in_bfloat16():
    assert kernels_usable("cuda", torch.cuda.current_device(), torch.bfloat16), "the fused kernels failed their self-check on this GPU"
    fused, plain = build_pair(forward_dtype="bfloat16", batch_size=16, seq_len=81, hidden_size=128, num_heads=2, puzzle_emb_ndim=128)
    config = {**CONFIG, "batch_size": 16, "seq_len": 81}
    batch = {key: value.cuda() for key, value in make_batch(config).items()}
    fused, plain = fused.cuda().train(), plain.cuda().train()
    compiled_fused, compiled_plain = torch.compile(fused, fullgraph=True), torch.compile(plain, fullgraph=True)
    torch.manual_seed(1)
    carry_fused, loss_fused, _, outputs_fused, _ = compiled_fused(carry=fused.initial_carry(batch), batch=batch, return_keys=["logits"])
    torch.manual_seed(1)
    carry_plain, loss_plain, _, outputs_plain, _ = compiled_plain(carry=plain.initial_carry(batch), batch=batch, return_keys=["logits"])
    logits_error = (outputs_fused["logits"].float() - outputs_plain["logits"].float()).norm() / outputs_plain["logits"].float().norm()
    state_error = (carry_fused.inner_carry.z_H.float() - carry_plain.inner_carry.z_H.float()).norm() / carry_plain.inner_carry.z_H.float().norm()
    assert logits_error < 3e-2 and state_error < 3e-2, (logits_error.item(), state_error.item())
    assert abs(loss_fused.item() - loss_plain.item()) / abs(loss_plain.item()) < 3e-2
