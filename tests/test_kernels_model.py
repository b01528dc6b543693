"""The fused-kernel path of the whole model against the PyTorch path, with the same weights.

On a machine without CUDA the kernels run in Triton's CPU interpreter: the layers' device check is
bypassed so that the fused path is taken, in float32, where the two paths must agree to rounding.
On a GPU the real kernels run in bfloat16, compiled, as training runs them.
"""

import pytest
import torch

pytest.importorskip("triton")

import models.layers as layers_module  # noqa: E402
from models.hrm.hrm_act_v1 import HierarchicalReasoningModel_ACTV1  # noqa: E402
from models.kernels import kernels_usable  # noqa: E402
from models.losses import ACTLossHead  # noqa: E402
from tests.test_model_act import make_batch  # noqa: E402

# Small, but with shapes the kernel handles: hidden 64, inner 256.
CONFIG = dict(
    batch_size=3, seq_len=20, puzzle_emb_ndim=64, num_puzzle_identifiers=4, vocab_size=6,
    H_cycles=2, L_cycles=2, H_layers=2, L_layers=2, hidden_size=64, expansion=2, num_heads=2,
    pos_encodings="rope", halt_max_steps=3, halt_exploration_prob=0.5, forward_dtype="float32",
)  # fmt: skip


def build_pair(**overrides):
    """Two loss heads with identical weights, one with fused kernels, one without."""
    config = {**CONFIG, **overrides}
    torch.manual_seed(0)
    fused = ACTLossHead(HierarchicalReasoningModel_ACTV1({**config, "fused_kernels": True}), "stablemax_cross_entropy")
    plain = ACTLossHead(HierarchicalReasoningModel_ACTV1({**config, "fused_kernels": False}), "stablemax_cross_entropy")
    plain.load_state_dict(fused.state_dict())
    with torch.no_grad():  # a non-trivial Q head, so halting decisions depend on the computation
        for head in (fused, plain):
            head.model.inner.q_head.weight.copy_(torch.linspace(-0.5, 0.5, head.model.inner.q_head.weight.numel()).view(2, -1))
    return fused, plain


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


def run_calls(head, batch, calls=3):
    """Training calls (loss, outputs, halting, gradients) with the same exploration draws."""
    torch.manual_seed(1)
    carry, results = head.initial_carry(batch), []
    for _ in range(calls):
        head.zero_grad(set_to_none=True)
        carry, loss, metrics, outputs, _ = head(carry=carry, batch=batch, return_keys=["logits", "q_halt_logits", "q_continue_logits"])
        loss.backward()
        grads = {name: param.grad.clone() for name, param in head.named_parameters() if param.grad is not None}
        results.append((loss.detach(), outputs, carry.halted.clone(), carry.inner_carry.z_H.clone(), grads))
    return results


def test_fused_training_calls_equal_the_pytorch_path(fused_on_cpu):
    fused, plain = build_pair()
    batch = make_batch(CONFIG)
    for mine, reference in zip(run_calls(fused.train(), batch), run_calls(plain.train(), batch)):
        loss, outputs, halted, z_H, grads = mine
        assert torch.allclose(loss, reference[0], rtol=1e-5)
        for key in outputs:
            assert torch.allclose(outputs[key], reference[1][key], rtol=1e-4, atol=1e-5), key
        assert torch.equal(halted, reference[2])
        assert torch.allclose(z_H, reference[3], rtol=1e-4, atol=1e-5)
        assert grads.keys() == reference[4].keys()
        for name in grads:
            assert torch.allclose(grads[name], reference[4][name], rtol=1e-4, atol=1e-6), name


def test_fused_evaluation_equals_the_pytorch_path(fused_on_cpu):
    fused, plain = build_pair(pos_encodings="learned")
    batch = make_batch(CONFIG, seed=3)
    results = []
    for head in (fused.eval(), plain.eval()):
        with torch.inference_mode():
            carry = head.initial_carry(batch)
            for _ in range(CONFIG["halt_max_steps"]):
                carry, _, metrics, outputs, _ = head(carry=carry, batch=batch, return_keys=["logits"])
        results.append((outputs["logits"], metrics["exact_accuracy"], carry.inner_carry.z_L))
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-4, atol=1e-5)
    assert torch.equal(results[0][1], results[1][1])
    assert torch.allclose(results[0][2], results[1][2], rtol=1e-4, atol=1e-5)


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
