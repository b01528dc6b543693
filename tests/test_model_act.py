"""Config validation, the ACT wrapper's halting rules, positional encodings, dtypes and size."""

import pytest
import torch

from models.hrm.hrm_act_v1 import HierarchicalReasoningModel_ACTV1, HierarchicalReasoningModel_ACTV1Carry
from models.losses import ACTLossHead

SMALL = dict(
    batch_size=3, seq_len=8, puzzle_emb_ndim=16, num_puzzle_identifiers=4, vocab_size=6,
    H_cycles=2, L_cycles=2, H_layers=1, L_layers=1, hidden_size=16, expansion=2, num_heads=2,
    pos_encodings="rope", halt_max_steps=3, halt_exploration_prob=0.0, forward_dtype="float32",
)  # fmt: skip


def make_batch(config: dict, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    shape = (config["batch_size"], config["seq_len"])
    labels = torch.randint(0, config["vocab_size"], shape, generator=generator, dtype=torch.int32)
    labels[:, :2] = -100
    return dict(
        inputs=torch.randint(0, config["vocab_size"], shape, generator=generator, dtype=torch.int32),
        labels=labels,
        puzzle_identifiers=torch.randint(0, config["num_puzzle_identifiers"], (config["batch_size"],), generator=generator, dtype=torch.int32),
    )


def make_head(seed: int = 0, **overrides) -> ACTLossHead:
    torch.manual_seed(seed)
    return ACTLossHead(HierarchicalReasoningModel_ACTV1({**SMALL, **overrides}), "stablemax_cross_entropy")


def training_calls(head: ACTLossHead, batch: dict, calls: int = 3) -> list:
    """Training calls (loss, outputs, halting, z_H, gradients), with the same exploration draws each time."""
    torch.manual_seed(1)
    carry, results = head.initial_carry(batch), []
    for _ in range(calls):
        head.zero_grad(set_to_none=True)
        carry, loss, metrics, outputs, _ = head(carry=carry, batch=batch, return_keys=["logits", "q_halt_logits", "q_continue_logits"])
        loss.backward()
        grads = {name: param.grad.clone() for name, param in head.named_parameters() if param.grad is not None}
        results.append((loss.detach(), outputs, carry.halted.clone(), carry.inner_carry.z_H.clone(), grads))
    return results


def assert_training_calls_match(calls: list, reference_calls: list) -> None:
    """`training_calls` of two heads agree to float32 rounding."""
    for (loss, outputs, halted, z_H, grads), reference in zip(calls, reference_calls, strict=True):
        torch.testing.assert_close(loss, reference[0], rtol=1e-5, atol=0)
        for key in outputs:
            torch.testing.assert_close(outputs[key], reference[1][key], rtol=1e-4, atol=1e-5)
        assert torch.equal(halted, reference[2])
        torch.testing.assert_close(z_H, reference[3], rtol=1e-4, atol=1e-5)
        assert grads.keys() == reference[4].keys()
        for name in grads:
            torch.testing.assert_close(grads[name], reference[4][name], rtol=1e-4, atol=1e-6)


def evaluation_result(head: ACTLossHead, batch: dict, steps: int) -> tuple:
    """Logits, exact accuracy and z_L after `steps` evaluation calls."""
    with torch.inference_mode():
        carry = head.eval().initial_carry(batch)
        for _ in range(steps):
            carry, _, metrics, outputs, _ = head(carry=carry, batch=batch, return_keys=["logits"])
    return outputs["logits"], metrics["exact_accuracy"], carry.inner_carry.z_L


def set_q_head(head: ACTLossHead, halt_bias: float, continue_bias: float) -> None:
    with torch.no_grad():
        head.model.inner.q_head.weight.zero_()
        head.model.inner.q_head.bias.copy_(torch.tensor([halt_bias, continue_bias]))


def test_unknown_config_keys_are_named():
    with pytest.raises(ValueError, match="Unknown HRM config keys: causal, hiden_size"):
        HierarchicalReasoningModel_ACTV1({**SMALL, "hiden_size": 8, "causal": False})


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(num_heads=3), "divisible by num_heads"),
        (dict(forward_dtype="int32"), "floating-point dtype"),
        (dict(forward_dtype="float33"), "floating-point dtype"),
        (dict(pos_encodings="alibi"), "pos_encodings"),
        (dict(halt_max_steps=0), "halt_max_steps"),
        (dict(halt_exploration_prob=1.5), r"halt_exploration_prob=1.5 must be in \[0, 1\]"),
    ],
)
def test_invalid_config_values_are_rejected(override, message):
    with pytest.raises(ValueError, match=message):
        HierarchicalReasoningModel_ACTV1({**SMALL, **override})


def test_missing_config_key_is_rejected():
    config = dict(SMALL)
    del config["vocab_size"]
    with pytest.raises(ValueError, match="vocab_size"):
        HierarchicalReasoningModel_ACTV1(config)


@pytest.mark.parametrize(
    "overrides, puzzle_len",
    [
        (dict(pos_encodings="rope"), 1),
        (dict(pos_encodings="learned"), 1),
        (dict(puzzle_emb_ndim=0), 0),
        (dict(puzzle_emb_ndim=24, pos_encodings="learned"), 2),  # 24 dims on 2 positions of 16, zero-padded
    ],
)
def test_positional_encodings_and_puzzle_layouts_train(overrides, puzzle_len):
    head = make_head(**overrides).train()
    config = {**SMALL, **overrides}
    batch = make_batch(config)
    carry = head.initial_carry(batch)
    carry, loss, metrics, outputs, _ = head(carry=carry, batch=batch, return_keys=["logits", "preds", "q_halt_logits"])
    loss.backward()

    assert head.model.inner.puzzle_emb_len == puzzle_len
    assert carry.inner_carry.z_H.shape == (3, 8 + puzzle_len, 16)
    assert outputs["logits"].shape == (3, 8, 6)
    assert outputs["preds"].dtype == torch.int64 and torch.equal(outputs["preds"], outputs["logits"].argmax(-1))
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())

    keys = set(head.state_dict())
    assert ("model.inner.embed_pos.embedding_weight" in keys) == (config["pos_encodings"] == "learned")
    assert ("model.inner.puzzle_emb.weights" in keys) == (puzzle_len > 0)
    if puzzle_len:
        assert head.model.puzzle_emb.local_weights.grad.shape == (3, config["puzzle_emb_ndim"])


def test_first_call_loads_every_sequence_and_halted_ones_are_replaced():
    head = make_head(halt_max_steps=2).eval()
    batch_a, batch_b = make_batch(SMALL, seed=1), make_batch(SMALL, seed=2)
    carry = head.initial_carry(batch_a)
    assert isinstance(carry, HierarchicalReasoningModel_ACTV1Carry) and carry.halted.all()

    with torch.no_grad():
        carry, _, _, _, _ = head(carry=carry, batch=batch_a, return_keys=[])
        assert all(torch.equal(carry.current_data[k], batch_a[k]) for k in batch_a)
        carry, _, _, _, _ = head(carry=carry, batch=batch_b, return_keys=[])  # not halted: keeps batch_a
        assert all(torch.equal(carry.current_data[k], batch_a[k]) for k in batch_a)
        assert carry.halted.all() and torch.all(carry.steps == 2)
        carry, _, _, _, _ = head(carry=carry, batch=batch_b, return_keys=[])  # all halted: takes batch_b
        assert all(torch.equal(carry.current_data[k], batch_b[k]) for k in batch_b)
        assert torch.all(carry.steps == 1)


def test_eval_ignores_q_head_and_runs_halt_max_steps():
    head = make_head().eval()
    set_q_head(head, halt_bias=10.0, continue_bias=-10.0)  # would halt at once in training
    batch = make_batch(SMALL)
    with torch.no_grad():
        carry = head.initial_carry(batch)
        for step in range(1, SMALL["halt_max_steps"] + 1):
            carry, _, metrics, outputs, all_halted = head(carry=carry, batch=batch, return_keys=[])
            assert "target_q_continue" not in outputs and "q_continue_loss" not in metrics
            assert bool(all_halted) == (step == SMALL["halt_max_steps"])


def test_training_halts_on_q_head_unless_exploring():
    head = make_head().train()
    set_q_head(head, halt_bias=10.0, continue_bias=-10.0)
    batch = make_batch(SMALL)
    carry, _, metrics, _, all_halted = head(carry=head.initial_carry(batch), batch=batch, return_keys=[])
    assert bool(all_halted) and torch.all(carry.steps == 1)
    assert "q_continue_loss" in metrics

    # With exploration certain, every sequence draws a minimum of >= 2 steps, so none halts at step 1.
    explore = make_head(halt_exploration_prob=1.0).train()
    set_q_head(explore, halt_bias=10.0, continue_bias=-10.0)
    carry, _, _, _, _ = explore(carry=explore.initial_carry(batch), batch=batch, return_keys=[])
    assert not carry.halted.any()


def test_exploration_draws_from_the_global_rng():
    def halting_pattern(seed):
        head = make_head(halt_max_steps=8, halt_exploration_prob=0.5, batch_size=16).train()
        set_q_head(head, halt_bias=10.0, continue_bias=-10.0)
        batch = make_batch({**SMALL, "batch_size": 16})
        torch.manual_seed(seed)
        carry, pattern = head.initial_carry(batch), []
        for _ in range(4):
            carry, _, _, _, _ = head(carry=carry, batch=batch, return_keys=[])
            pattern.append(carry.halted.clone())
        return torch.stack(pattern)

    assert torch.equal(halting_pattern(1), halting_pattern(1))
    assert not torch.equal(halting_pattern(1), halting_pattern(2))


def test_target_q_continue_uses_q_halt_on_the_last_step():
    head = make_head(halt_max_steps=2).train()
    set_q_head(head, halt_bias=-3.0, continue_bias=2.0)  # never halts on its own
    batch = make_batch(SMALL)
    carry = head.initial_carry(batch)
    carry, outputs = head.model(carry, batch)
    assert torch.allclose(outputs["target_q_continue"], torch.sigmoid(torch.tensor(2.0)).expand(3))  # max(halt, continue)
    carry, outputs = head.model(carry, batch)
    assert torch.allclose(outputs["target_q_continue"], torch.sigmoid(torch.tensor(-3.0)).expand(3))  # last step: halt
    assert carry.halted.all()


def test_bfloat16_forward_keeps_float32_weights():
    head = make_head(forward_dtype="bfloat16").train()
    batch = make_batch(SMALL)
    carry, loss, _, outputs, _ = head(carry=head.initial_carry(batch), batch=batch, return_keys=["logits", "q_halt_logits"])
    loss.backward()
    assert outputs["logits"].dtype == torch.bfloat16
    assert outputs["q_halt_logits"].dtype == torch.float32
    assert carry.inner_carry.z_H.dtype == torch.bfloat16
    assert head.model.inner.H_init.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in head.parameters())
    assert head.model.puzzle_emb.weights.dtype == torch.float32


def test_default_config_parameter_count():
    # config/arch/hrm_v1.yaml on the Sudoku-Extreme shape (vocab 11, 81 cells, one puzzle identifier).
    config = dict(
        batch_size=384, seq_len=81, puzzle_emb_ndim=512, num_puzzle_identifiers=1, vocab_size=11,
        H_cycles=2, L_cycles=2, H_layers=4, L_layers=4, hidden_size=512, expansion=4, num_heads=8,
        pos_encodings="rope", halt_max_steps=16, halt_exploration_prob=0.1,
    )  # fmt: skip
    with torch.device("meta"):
        head = ACTLossHead(HierarchicalReasoningModel_ACTV1(config), "stablemax_cross_entropy")
    # The original reports sum(p.numel() for p in parameters()); the puzzle embedding is a buffer.
    assert sum(p.numel() for p in head.parameters()) == 27_275_266
    assert head.model.puzzle_emb.weights.numel() == 512
